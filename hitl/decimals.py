"""Decimal arithmetic shared by prices, slippage and snapshots: 8 places, ROUND_HALF_EVEN."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

PLACES = 8
QUANTUM = Decimal(1).scaleb(-PLACES)  # Decimal("1E-8")
MAX_DIGITS = 18


def quantize8(value: Decimal) -> Decimal:
    """Round ``value`` to 8 decimal places with banker's rounding."""
    return value.quantize(QUANTUM, rounding=ROUND_HALF_EVEN)


def canonical_decimal(value: Decimal) -> str:
    """Render ``value`` with exactly 8 places, so equal amounts always print alike."""
    quantized = quantize8(value)
    # -0 and 0 are one amount, and PostgreSQL NUMERIC hands negative zero back as 0.
    return format(quantized.copy_abs() if quantized.is_zero() else quantized, "f")
