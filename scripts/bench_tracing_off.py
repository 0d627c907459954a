"""What tracing costs a request when it is off: the calls each inference makes into
``service.tracing`` (two steps, two attribute calls, the batcher's check), timed in a loop.

    PYTHONPATH=. .venv/bin/python scripts/bench_tracing_off.py
"""

from __future__ import annotations

import timeit

from service import tracing


def per_request() -> None:
    """The tracing calls of one /v2 or gRPC inference, as service.protocol_infer makes them."""
    tracing.set_attributes(model="m", version=1)
    with tracing.step("read"):
        pass
    tracing.set_attributes(images=1)
    if tracing.TRACER is not None:  # the batcher's check
        pass
    with tracing.step("encode"):
        pass


def empty() -> None:
    pass


def main() -> None:
    assert tracing.TRACER is None, "unset the OTEL_* variables: this measures tracing off"
    number = 200_000
    calls = min(timeit.repeat(per_request, number=number, repeat=7)) / number
    baseline = min(timeit.repeat(empty, number=number, repeat=7)) / number
    print(f"tracing off: {(calls - baseline) * 1e9:.0f} ns per inference request "
          f"(an empty call: {baseline * 1e9:.0f} ns)")


if __name__ == "__main__":
    main()
