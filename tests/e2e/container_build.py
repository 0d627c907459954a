"""Build and run the Dockerfile's images without a Docker engine or an image registry.

buildah (Debian package) builds as root with ``--storage-driver vfs --isolation chroot
--network host`` (pip reaches its index through the host's network). Its storage lives under
``$CONVSERVE_CACHE/containers`` (default ``~/.cache/convserve/containers``), apart from any
other buildah user on the machine.

No registry is reachable, so the base is made offline: ``debootstrap --variant=minbase`` of
Debian bookworm with python3, python3-venv and ca-certificates (the tree is cached as a tarball,
so only the first run pays for it), the host's CA bundle copied in so that pip inside the build
trusts what pip outside it trusts, imported as ``localhost/convserve-base:bookworm``. It stands
in for the public python image the Dockerfile defaults to; nothing else changes for the test.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from training.assets import cache_dir

BASE_IMAGE = "localhost/convserve-base:bookworm"
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEBIAN_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def missing_tools() -> list[str]:
    """The system tools these builds need that this machine lacks."""
    return [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]


def debian_mirror() -> str:
    """The host's own Debian mirror (apt's sources), so debootstrap needs no other network."""
    for path in DEBIAN_SOURCES:
        if path.exists():
            for uri in re.findall(r"(?:URIs:\s*|^deb\s+)(\S+)", path.read_text(), re.MULTILINE):
                if "security" not in uri:
                    return uri
    return DEFAULT_MIRROR


@dataclass
class Buildah:
    """buildah with this project's storage; every call fails loudly with its output."""

    root: Path

    def __call__(self, *args: str, timeout: float = 1800) -> str:
        command = ["buildah", "--root", str(self.root / "storage"), "--runroot",
                   str(self.root / "run"), "--storage-driver", "vfs", *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(command)}\n{result.stdout[-4000:]}"
                                 f"{result.stderr[-4000:]}")
        return result.stdout

    def popen(self, *args: str) -> subprocess.Popen[str]:
        command = ["buildah", "--root", str(self.root / "storage"), "--runroot",
                   str(self.root / "run"), "--storage-driver", "vfs", *args]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)

    def config(self, image: str) -> dict:
        """The image's Docker config (Env, User, WorkingDir, Cmd, Healthcheck, ...)."""
        return json.loads(self("inspect", "--type", "image", image))["Docker"]["config"]

    def size(self, image: str) -> str:
        """The image's size as buildah reports it (its layers, uncompressed), e.g. "459 MB"."""
        return str(json.loads(self("images", "--json", image))[0]["size"])


def buildah() -> Buildah:
    root = cache_dir() / "containers"
    root.mkdir(parents=True, exist_ok=True)
    return Buildah(root)


def base_image(tool: Buildah) -> str:
    """``localhost/convserve-base:bookworm``, from the cached debootstrap tree (made on the
    first run) with the host's CA bundle, kept while that bundle is unchanged; returns its name.
    Working containers and images left by an interrupted run are removed first."""
    tool("rm", "--all")
    tool("rmi", "--prune")
    ca_sha256 = hashlib.sha256(HOST_CA_BUNDLE.read_bytes()).hexdigest()
    with contextlib.suppress(AssertionError):
        labels = json.loads(tool("inspect", "--type", "image", BASE_IMAGE))[
            "Docker"]["config"].get("Labels") or {}
        if labels.get("convserve.ca-sha256") == ca_sha256:
            return BASE_IMAGE
    tree = tool.root / "bookworm-minbase.tar"
    if not tree.exists():
        rootfs = tool.root / "bookworm-rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}",
                        "bookworm", str(rootfs), debian_mirror()], check=True,
                       capture_output=True, timeout=1800)
        for leftovers in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / leftovers).glob("*"):
                if path.is_file():
                    path.unlink()
        partial = tree.with_suffix(".part")
        with tarfile.open(partial, "w") as archive:
            archive.add(rootfs, arcname=".")
        partial.replace(tree)
        shutil.rmtree(rootfs)
    container = tool("from", "scratch").strip()
    try:
        tool("add", container, str(tree), "/")
        tool("copy", container, str(HOST_CA_BUNDLE), "/etc/ssl/certs/ca-certificates.crt")
        tool("config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "--cmd", "python3", "--label", f"convserve.ca-sha256={ca_sha256}", container)
        tool("commit", "--quiet", "--format", "docker", "--rm", container, BASE_IMAGE)
    except BaseException:
        tool("rm", container)
        raise
    return BASE_IMAGE


def build(tool: Buildah, context: Path, target: str, tag: str, **build_args: str) -> float:
    """``buildah bud`` of the Dockerfile's ``target`` on the offline base; returns seconds."""
    args = [f"--build-arg=BASE_IMAGE={BASE_IMAGE}",
            *(f"--build-arg={key}={value}" for key, value in build_args.items())]
    started = time.perf_counter()
    tool("bud", "--isolation", "chroot", "--network", "host", "--format", "docker",
         "--layers=false", "--target", target, *args, "-t", tag, str(context))
    return time.perf_counter() - started


@dataclass
class Container:
    """A working container of an image, its config, and ``buildah run`` as the image would."""

    tool: Buildah
    name: str
    config: dict

    def command(self, argv: list[str], *, volumes: tuple[str, ...] = (),
                env: dict[str, str] | None = None, user: str | None = None) -> list[str]:
        """``buildah run`` arguments: ``user`` or the image's, the host's network, ``volumes``."""
        args = ["run", "--isolation", "chroot", "--network", "host",
                "--user", user or self.config.get("User") or "0"]
        for volume in volumes:
            args += ["--volume", volume]
        for key, value in (env or {}).items():
            args += ["--env", f"{key}={value}"]
        return [*args, self.name, "--", *argv]

    def run(self, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        tool = self.tool
        command = ["buildah", "--root", str(tool.root / "storage"), "--runroot",
                   str(tool.root / "run"), "--storage-driver", "vfs",
                   *self.command(argv, **kwargs)]  # type: ignore[arg-type]
        return subprocess.run(command, capture_output=True, text=True, timeout=900)

    @contextlib.contextmanager
    def started(self, argv: list[str], **kwargs: object) -> Iterator[subprocess.Popen[str]]:
        """Run ``argv`` in the background; stopped (SIGTERM, then SIGKILL) on exit."""
        process = self.tool.popen(*self.command(argv, **kwargs))  # type: ignore[arg-type]
        try:
            yield process
        finally:
            stop(process)


def stop(process: subprocess.Popen[str]) -> None:
    """Stop ``process`` and everything it started (its own session)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(40)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # anything left in its group


@contextlib.contextmanager
def container(tool: Buildah, image: str) -> Iterator[Container]:
    """A working container of ``image``, removed on exit."""
    name = tool("from", image).strip()
    try:
        yield Container(tool, name, tool.config(image))
    finally:
        tool("rm", name)
