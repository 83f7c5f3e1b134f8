"""Hypothesis strategies shared by the fuzz tests of the suite API (unit) and of the servers'
wire protocol (protocol): anything a JSON decoder can hand over, including the numbers that
break naive code (integers past 64 bits, NaN, infinities)."""

from __future__ import annotations

from hypothesis import strategies as st

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=16)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
