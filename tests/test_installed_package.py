"""The tests run against the installed wheel, not the source tree."""
import os

import fastad


def test_imported_from_the_installed_package():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = os.path.join(here, "python")
    path = os.path.abspath(fastad.__file__)
    if os.environ.get("FASTAD_ALLOW_SOURCE_TREE") != "1":
        assert not path.startswith(source), f"fastad was imported from the source tree: {path}"
    assert os.path.exists(os.path.join(os.path.dirname(path), "py.typed"))
    assert os.path.exists(os.path.join(os.path.dirname(path), "_fastad.pyi"))
