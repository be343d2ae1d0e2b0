"""The C part of overrided: the TFTP lockstep loop (overrided/tftp/_lockstep.c).

Everything else is in pyproject.toml. The extension is optional: where no C compiler is
available the build goes on without it and the transfer runs its loop in Python (slower per
block at window 1, the same on the wire).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "overrided.tftp._lockstep",
            ["overrided/tftp/_lockstep.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
            optional=True,
        )
    ]
)
