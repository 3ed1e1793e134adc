"""Golden tests: expected costs are computed by hand here, from list prices typed in."""

from dataclasses import dataclass
from decimal import Decimal

import pytest

from budget_proxy.usage import (
    Usage,
    cost_of,
    from_anthropic,
    from_gemini,
    from_openai,
    worst_case_nusd,
)


@dataclass
class Price:
    input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal
    cache_read_usd_per_mtok: Decimal | None = None
    cache_write_usd_per_mtok: Decimal | None = None
    reasoning_usd_per_mtok: Decimal | None = None


GPT_4O = Price(Decimal("2.50"), Decimal("10.00"), Decimal("1.25"))
SONNET = Price(Decimal("3"), Decimal("15"), Decimal("0.30"), Decimal("3.75"))
NO_CACHE_RATES = Price(Decimal("1"), Decimal("2"))


def test_openai_chat_cached_tokens_are_not_double_counted():
    usage = from_openai({
        "prompt_tokens": 2000, "completion_tokens": 300, "total_tokens": 2300,
        "prompt_tokens_details": {"cached_tokens": 1500},
        "completion_tokens_details": {"reasoning_tokens": 0},
    })
    assert usage == Usage(input_tokens=500, cached_input_tokens=1500, output_tokens=300)
    cost = cost_of(usage, GPT_4O)
    # 500 x $2.50/M + 1500 x $1.25/M = $0.00125 + $0.001875 = $0.003125
    assert cost.input_nusd == 3_125_000
    # 300 x $10/M = $0.003
    assert cost.output_nusd == 3_000_000
    assert usage.total_tokens == 2300


def test_openai_responses_usage_with_reasoning():
    usage = from_openai({
        "input_tokens": 100, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 500, "output_tokens_details": {"reasoning_tokens": 400},
        "total_tokens": 600,
    })
    assert usage == Usage(input_tokens=100, output_tokens=500, reasoning_tokens=400)
    # reasoning priced at the output rate: 100 x 2.5 + 500 x 10 = 250 + 5000 micro-USD
    assert cost_of(usage, GPT_4O).total_nusd == 5_250_000


def test_anthropic_cache_reads_and_writes_at_cache_rates():
    usage = from_anthropic({
        "input_tokens": 50, "cache_read_input_tokens": 10_000,
        "cache_creation_input_tokens": 2_000, "output_tokens": 400,
    })
    assert usage.total_input_tokens == 12_050
    cost = cost_of(usage, SONNET)
    # 50 x $3/M = 150 uUSD; 10000 x $0.30/M = 3000 uUSD; 2000 x $3.75/M = 7500 uUSD
    assert cost.input_nusd == (150 + 3000 + 7500) * 1000
    # 400 x $15/M = 6000 uUSD
    assert cost.output_nusd == 6_000_000


def test_anthropic_stream_output_from_message_delta():
    start = {"input_tokens": 20, "output_tokens": 1, "cache_read_input_tokens": 0}
    assert from_anthropic(start, output_tokens=77) == Usage(input_tokens=20, output_tokens=77)


def test_missing_cache_rates_fall_back_to_input_rate():
    usage = Usage(input_tokens=10, cached_input_tokens=10, cache_write_tokens=10, output_tokens=10)
    # 30 input-side tokens at $1/M, 10 output at $2/M
    assert cost_of(usage, NO_CACHE_RATES).total_nusd == 30_000 + 20_000


def test_gemini_usage_metadata():
    usage = from_gemini({"promptTokenCount": 1000, "cachedContentTokenCount": 400,
                         "candidatesTokenCount": 50, "thoughtsTokenCount": 100})
    assert usage == Usage(input_tokens=600, cached_input_tokens=400, output_tokens=150,
                          reasoning_tokens=100)


def test_sub_nano_amounts_round_half_up():
    cheap = Price(Decimal("0.0005"), Decimal("0.0005"))
    # 1 token x $0.0005/M = 0.5 nano-USD -> 1
    assert cost_of(Usage(input_tokens=1), cheap).total_nusd == 1


@pytest.mark.parametrize(
    ("input_tokens", "max_output", "price", "expected_nusd"),
    [
        (1000, 500, GPT_4O, 2_500_000 + 5_000_000),
        # cache writes cost more than input for Anthropic: the worst case uses the dearer rate
        (1000, 100, SONNET, 3_750_000 + 1_500_000),
        (0, 0, GPT_4O, 0),
    ],
)
def test_worst_case(input_tokens, max_output, price, expected_nusd):
    assert worst_case_nusd(input_tokens, max_output, price) == expected_nusd
