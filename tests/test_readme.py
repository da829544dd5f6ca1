"""Every ```python block of the README runs as written (each in a fresh namespace)."""

import re
from pathlib import Path

import pytest

README = (Path(__file__).parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_opens_with_make_demo_and_make_test():
    first = re.search(r"```bash\n(.*?)```", README, flags=re.S).group(1).strip().splitlines()
    assert [ln.split("#")[0].strip() for ln in first] == ["make demo", "make test"]


def test_readme_has_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_example_runs(i):
    exec(compile(BLOCKS[i], f"README block {i}", "exec"), {"__name__": f"readme_{i}"})
