"""The pytest plugin (entry point `pytest11: kvm_conformance` -> plugin.py) and its
pytest-free snapshot session."""
