import subprocess
import sys

import sanitycheck


def test_every_exported_name_resolves():
    for name in sanitycheck.__all__:
        assert getattr(sanitycheck, name) is not None, name


def test_import_is_light():
    code = "import sys, sanitycheck; print('captum' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
