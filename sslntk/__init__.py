"""sslntk: simulate how self-supervised learning trains wide neural networks, in JAX.

Modules (data flows one way, DESIGN.md): data → kernels → dynamics/theory → metrics; finite.
"""

from sslntk import _validate  # noqa: F401  (ensures validation helpers import first)

__version__ = "0.1.0"
