"""A node builds file paths only from plain identifiers: a run key from the network is never a path."""

from __future__ import annotations

import pytest

from sfedlora.errors import SfedloraError
from sfedlora.runtime.statefile import node_file


@pytest.mark.parametrize("key", ["../../etc", "a/b", "", "x" * 65, "..", "a b", "run\n"])
def test_node_refuses_a_run_key_that_is_not_a_plain_identifier(key, tmp_path):
    with pytest.raises(SfedloraError, match="not a plain identifier"):
        node_file(tmp_path, key, 0)
    assert node_file(tmp_path, "0f3a_run-1", 2) == tmp_path / "0f3a_run-1" / "client-2.safetensors"
