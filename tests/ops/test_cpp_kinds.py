"""The element kinds maefast._C takes come from the extension itself (one table, csrc/common.h)."""
import pytest
import torch

from maefast.ops import _cpp
from maefast.ops.backend import cpp_extension

pytestmark = pytest.mark.skipif(cpp_extension() is None, reason="maefast._C is not built")


def test_every_dtype_the_ops_pass_has_its_own_kind():
    dtypes = (torch.float32, torch.bfloat16, torch.float16, torch.uint8, torch.uint16, torch.int64)
    codes = [_cpp.kind(dtype) for dtype in dtypes]
    assert len(set(codes)) == len(dtypes)
    assert sorted(cpp_extension().ELEMENT_KINDS) == sorted(str(d).removeprefix("torch.") for d in dtypes)


def test_a_dtype_the_extension_does_not_take_is_named():
    with pytest.raises(TypeError, match="does not take torch.float64"):
        _cpp.kind(torch.float64)
