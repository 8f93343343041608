"""Shim: keeps ``from services.profit_gate_kernel import profit_gate, GateVerdict, record_trade``
working in the application tree. Installed by the core_kernel role as
``<app>/services/profit_gate_kernel.py``; the implementation lives in the kernel venv."""

from core_kernel.profit_gate_kernel import *  # noqa: F403
from core_kernel.profit_gate_kernel import __all__  # noqa: F401
