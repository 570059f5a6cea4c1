"""Everything about the package is in pyproject.toml. This file only builds outside the
checkout: a temporary build directory, removed when the build step ends, so that
``pip install /path/to/framebus`` leaves no ``build/`` in the tree (issue 21)."""

import atexit
import shutil
import tempfile

from setuptools import setup

BUILD = tempfile.mkdtemp(prefix="framebus-build-")
atexit.register(shutil.rmtree, BUILD, True)

setup(options={"build": {"build_base": BUILD}, "egg_info": {"egg_base": BUILD}})
