"""The one thing pyproject.toml cannot say: the optional C extensions.

``resistance.net._splice`` (the splice relay) and ``resistance.vpn._awg`` (the AmneziaWG
translator's transport path; see the comment at the top of each source) are built on Linux
where a C compiler and Python's headers are found. ``optional=True``: where they do not
build, installation goes on and the same code runs in its Python version.
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
    ext_modules.append(
        Extension(
            "resistance.vpn._awg",
            ["src/resistance/vpn/_awg.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
            optional=True,
        )
    )

setup(ext_modules=ext_modules)
