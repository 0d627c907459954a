"""HTTP routes: one module per resource defining ``router``; ``create_app`` includes each."""
