"""Training methods. One file per method; each registers itself with `@register_method`.

Adding a method: write `dlb/methods/<name>.py` with a `Method` subclass (its `Config` dataclass is the schema of
`configs/method/<name>.yaml`), import it below, and add the YAML file.
"""
from dlb.methods.base import METHODS, Method, build_method, register_method
from dlb.methods import ce, cskd, ddgsd, dlb, lsr, pskd, tfkd  # noqa: F401  (registration)

__all__ = ["METHODS", "Method", "build_method", "register_method"]
