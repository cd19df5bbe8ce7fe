"""The ``jupyter_kernel_test`` conformance suite against the sandboxed kernel.

The suite drives the kernel through every message type (execute, complete, inspect,
history, is_complete, display data, errors, stdin) and validates each message against
the v5 message spec — here through the provisioner, the launcher and the unix sockets.
The kernelspec is throwaway (a temporary prefix), never the user's config.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import unittest
from pathlib import Path

import jupyter_kernel_test as jkt
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from tests.conftest import userns_problem
from tests.kernel_helpers import KERNEL_NAME, install_kernelspecs

pytestmark = [pytest.mark.kernel, pytest.mark.userns]


class SandboxedKernelConformance(jkt.KernelTests):
    kernel_name = KERNEL_NAME
    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples = ["import = 7q"]
    code_page_something = "zip?"
    code_generate_error = "raise ValueError('sandboxed')"
    code_execute_result = [
        {"code": "6*7", "result": "42"},
        {"code": "'ns' * 2", "result": "'nsns'"},
    ]
    code_display_data = [
        {
            "code": "from IPython.display import HTML, display; display(HTML('<b>x</b>'))",
            "mime": "text/html",
        },
        {
            "code": "from IPython.display import Math, display; display(Math('\\\\frac{1}{2}'))",
            "mime": "text/latex",
        },
    ]
    code_history_pattern = "6*7"
    # "range" is left out: plain ipykernel 7.4 fails that check too (measured here).
    supported_history_operations = ("tail", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"

    @classmethod
    def setUpClass(cls) -> None:
        problem = userns_problem()
        if problem:
            raise unittest.SkipTest(problem)
        cls._tmp = tempfile.mkdtemp(prefix="nsk-conformance-")
        # Also when the kernel fails to start below (then tearDownClass never runs).
        cls.addClassCleanup(shutil.rmtree, cls._tmp, ignore_errors=True)
        kernels = install_kernelspecs(Path(cls._tmp) / "prefix")
        cls.km = KernelManager(
            kernel_name=cls.kernel_name,
            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]),
        )
        os.mkdir(os.path.join(cls._tmp, "notebook"))
        cls.km.start_kernel(cwd=os.path.join(cls._tmp, "notebook"))
        cls.kc = cls.km.client()
        cls.kc.start_channels()
        cls.kc.wait_for_ready(timeout=60)
