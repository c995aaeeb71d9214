"""The one thing pyproject.toml cannot say: the optional C extension of the splice relay.

``resistance.net._splice`` (see the comment at the top of its source) is built on Linux
where a C compiler and Python's headers are found. ``optional=True``: where it does not
build, installation goes on and the node relays with the Python version of the same code.
"""

import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform.startswith("linux"):
    ext_modules.append(
        Extension(
            "resistance.net._splice",
            ["src/resistance/net/_splice.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
            optional=True,
        )
    )

setup(ext_modules=ext_modules)
