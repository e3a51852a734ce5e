"""``bench/crypto_cost.py`` runs with the real signer, verifier and codec and fills its table.

No timing is asserted: performance is measured by ``python -m bench.crypto_cost``, never here.
"""

from __future__ import annotations

from bench.crypto_cost import ROWS, measure, render


def test_measures_every_row_with_positive_figures() -> None:
    cost = measure(repetitions=3, batches=1)

    assert len(cost.rows) == ROWS == 23
    assert all(row.ns_each > 0 and row.ns_per_approval > 0 for row in cost.rows)
    assert cost.ms_per_approval > 0
    table = render(cost, repetitions=3, batches=1)
    assert table.count("\n| ") == ROWS + 1  # the header, then one line per row
