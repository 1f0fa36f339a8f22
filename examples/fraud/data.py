"""Synthetic card transactions for the fraud case study (seeded, generated locally).

Every row is one card transaction of one customer. Customers have a home region (the
fairness segment the rollout policy reads, ``segment_by: region``), a usual spend level and
usual habits; a transaction is fraud with probability about 1.5%. Fraudulent transactions
tend to happen at night, come in bursts (high ``velocity_1h``), spend far more than the
customer usually does (high ``spend_deviation``), are mostly card-not-present and favour a
few merchant categories. A share of them ("stealthy" fraud) copies the customer's normal
behaviour, so no model can catch every fraud: a good one reaches a recall around 0.88
with a precision around 0.9, the case study's operating point.

Columns
-------
``customer_id``      integer id; the routing key for sticky routing (not a model feature)
``amount``           transaction amount, lognormal around the customer's usual amount
``merchant_category`` one of :data:`MERCHANT_CATEGORIES`
``region``           ``eu`` / ``us`` / ``apac`` (shares about 0.5 / 0.3 / 0.2)
``payment_method``   ``card_present`` / ``card_not_present`` / ``wallet``
``device``           ``mobile`` / ``desktop`` / ``pos``
``hour``             local hour of day, 0-23
``velocity_1h``      the customer's transactions in the previous hour
``spend_deviation``  log of amount over the customer's usual amount
``label``            1 for fraud, 0 otherwise

``region`` and ``payment_method`` are kept as plain strings so a router can log them as
segments; the models encode categorical columns themselves (see ``fraud_pyfunc.py``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

REGIONS: tuple[str, ...] = ("eu", "us", "apac")
REGION_SHARES: tuple[float, ...] = (0.5, 0.3, 0.2)
PAYMENT_METHODS: tuple[str, ...] = ("card_present", "card_not_present", "wallet")
DEVICES: tuple[str, ...] = ("mobile", "desktop", "pos")
MERCHANT_CATEGORIES: tuple[str, ...] = (
    "grocery", "fuel", "restaurants", "retail", "travel", "electronics", "digital_goods",
    "gift_cards", "pharmacy", "entertainment",
)

#: Model input columns, in the order the models see them.
FEATURE_COLUMNS: tuple[str, ...] = (
    "amount", "merchant_category", "region", "payment_method", "device", "hour",
    "velocity_1h", "spend_deviation",
)
#: Columns holding strings; the model wrapper maps them to integer codes.
CATEGORICAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "merchant_category": MERCHANT_CATEGORIES,
    "region": REGIONS,
    "payment_method": PAYMENT_METHODS,
    "device": DEVICES,
}
#: Columns a router can read as fairness / reporting segments.
SEGMENT_COLUMNS: tuple[str, ...] = ("region", "payment_method")
#: The sticky-routing key.
ROUTING_KEY_COLUMN = "customer_id"
LABEL_COLUMN = "label"

FRAUD_RATE = 0.015
STEALTH_SHARE = 0.08      # share of fraud that mimics the customer's normal behaviour

# Payment-method mix of legitimate transactions per region (card_present, cnp, wallet).
_LEGIT_PAYMENT = {"eu": (0.55, 0.30, 0.15), "us": (0.60, 0.30, 0.10),
                  "apac": (0.45, 0.30, 0.25)}
_FRAUD_PAYMENT = (0.08, 0.72, 0.20)
_LEGIT_MERCHANT = (0.22, 0.12, 0.16, 0.16, 0.05, 0.06, 0.08, 0.02, 0.07, 0.06)
_FRAUD_MERCHANT = (0.04, 0.04, 0.03, 0.10, 0.14, 0.24, 0.17, 0.16, 0.02, 0.06)
# Relative transaction volume per hour of day for legitimate customers (peaks at midday
# and in the evening) and for fraudsters (mostly at night).
_LEGIT_HOURS = np.array([0.4, 0.25, 0.15, 0.1, 0.1, 0.2, 0.6, 1.2, 2.0, 2.6, 3.0, 3.3,
                         3.6, 3.4, 3.1, 3.0, 3.2, 3.6, 3.8, 3.5, 2.8, 2.0, 1.3, 0.8])
_FRAUD_HOURS = np.array([3.0, 3.4, 3.6, 3.5, 3.0, 2.2, 1.2, 0.8, 0.7, 0.8, 0.9, 1.0,
                         1.0, 1.0, 1.0, 1.0, 1.0, 1.1, 1.2, 1.3, 1.5, 1.8, 2.2, 2.6])


def _customers(n_customers: int, rng: np.random.Generator) -> pd.DataFrame:
    """Customer profiles: home region, usual spend (log scale), habits."""
    region = rng.choice(len(REGIONS), size=n_customers, p=REGION_SHARES)
    return pd.DataFrame({
        "region": region,
        "log_usual": rng.normal(3.6, 0.7, n_customers),      # median spend ~ 37
        "spend_sd": rng.uniform(0.35, 0.75, n_customers),   # how erratic their spend is
        "activity": rng.gamma(1.5, 0.6, n_customers),        # typical transactions per hour
        "mobile_pref": rng.uniform(0.2, 0.9, n_customers),   # mobile vs desktop online
    })


def _pick(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of ``probs`` (rows sum to 1)."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random(len(probs))[:, None]
    return np.minimum((u > cum).sum(axis=1), probs.shape[1] - 1)


def generate(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` transactions with a ``label`` column; the same ``(n, seed)`` gives the same rows.

    The customer population scales with ``n`` (about 20 transactions per customer, at
    least 500 customers), so the routing key repeats as it does in real traffic.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    rng = np.random.default_rng(seed)
    n_customers = max(500, n // 20)
    cust = _customers(n_customers, rng)
    # Some customers transact far more than others.
    weights = rng.pareto(2.0, n_customers) + 1.0
    customer = rng.choice(n_customers, size=n, p=weights / weights.sum())
    c_region = cust["region"].to_numpy()[customer]
    log_usual = cust["log_usual"].to_numpy()[customer]
    spend_sd = cust["spend_sd"].to_numpy()[customer]
    activity = cust["activity"].to_numpy()[customer]
    mobile_pref = cust["mobile_pref"].to_numpy()[customer]

    label = (rng.random(n) < FRAUD_RATE).astype(np.int8)
    fraud_like = (label == 1) & (rng.random(n) >= STEALTH_SHARE)   # visible fraud signal

    # Payment method: per-region mix for legitimate use, mostly card-not-present for fraud.
    legit_pm = np.array([_LEGIT_PAYMENT[r] for r in REGIONS])[c_region]
    pm_probs = np.where(fraud_like[:, None], np.array(_FRAUD_PAYMENT)[None, :], legit_pm)
    payment = _pick(rng, pm_probs)

    # Device follows the payment method: card-present is a POS terminal, otherwise the
    # customer's usual mix of mobile/desktop (fraudsters lean to desktop scripts).
    p_mobile = np.where(fraud_like, 0.4, mobile_pref)
    device = np.where(payment == 0, 2, np.where(rng.random(n) < p_mobile, 0, 1))
    # A few card-present transactions are keyed in on a phone (mobile POS).
    device = np.where((payment == 0) & (rng.random(n) < 0.05), 0, device)

    merchant_probs = np.where(fraud_like[:, None], np.array(_FRAUD_MERCHANT)[None, :],
                              np.array(_LEGIT_MERCHANT)[None, :])
    merchant = _pick(rng, merchant_probs)

    hour = np.where(
        fraud_like,
        rng.choice(24, size=n, p=_FRAUD_HOURS / _FRAUD_HOURS.sum()),
        rng.choice(24, size=n, p=_LEGIT_HOURS / _LEGIT_HOURS.sum()),
    )

    # Spend: the customer's usual level with their own spread; fraud spends much more
    # (testing a card with a tiny amount first happens too).
    log_dev = rng.normal(0.0, spend_sd)
    big = rng.normal(1.8, 0.6, n)
    card_test = rng.random(n) < 0.10
    fraud_dev = np.where(card_test, rng.normal(-2.5, 0.4, n), big)
    log_dev = np.where(fraud_like, fraud_dev, log_dev)
    # Legitimate splurges: a few big purchases that look like fraud on amount alone.
    splurge = (~fraud_like) & (rng.random(n) < 0.005)
    log_dev = np.where(splurge, rng.normal(1.6, 0.5, n), log_dev)
    amount = np.round(np.exp(log_usual + log_dev), 2).clip(0.5, None)
    spend_deviation = np.log(amount) - log_usual

    # Recent activity: Poisson around the customer's habit; fraud comes in bursts.
    velocity = rng.poisson(activity)
    velocity = np.where(fraud_like, rng.poisson(4.0, n) + rng.integers(2, 4, n), velocity)

    return pd.DataFrame({
        "customer_id": customer.astype(np.int64),
        "amount": amount,
        "merchant_category": np.array(MERCHANT_CATEGORIES)[merchant],
        "region": np.array(REGIONS)[c_region],
        "payment_method": np.array(PAYMENT_METHODS)[payment],
        "device": np.array(DEVICES)[device],
        "hour": hour.astype(np.int64),
        "velocity_1h": velocity.astype(np.int64),
        "spend_deviation": np.round(spend_deviation, 4),
        LABEL_COLUMN: label.astype(np.int64),
    })


def split_features_labels(frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The model input (feature columns only, in order) and the labels of ``frame``."""
    return frame[list(FEATURE_COLUMNS)].copy(), frame[LABEL_COLUMN].to_numpy(dtype=np.int64)


def request_columns() -> list[str]:
    """Columns a client sends per transaction: the features plus the routing key."""
    return [*FEATURE_COLUMNS, ROUTING_KEY_COLUMN]
