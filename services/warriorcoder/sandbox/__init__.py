"""Running untrusted model code in a sandbox (guarantees and limits: ``sandbox.sandbox``).

Usage::

    from warriorcoder.sandbox import Sandbox, SandboxUnavailable, probe
"""

from warriorcoder.sandbox.sandbox import Sandbox, SandboxUnavailable, probe

__all__ = ["Sandbox", "SandboxUnavailable", "probe"]
