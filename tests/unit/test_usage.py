"""Golden tests: expected costs are computed by hand here, from list prices typed in."""

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from budget_proxy.models import MAX_CALL_TOKENS
from budget_proxy.pricing import PriceFields
from budget_proxy.usage import (
    USAGE_FLAGS,
    Usage,
    clamp_count,
    cost_of,
    from_anthropic,
    from_gemini,
    from_openai,
    merge_flags,
    worst_case_nusd,
)


def Price(
          input_rate: Decimal, output_rate: Decimal, cache_read: Decimal | None = None,
          cache_write: Decimal | None = None, reasoning: Decimal | None = None) -> PriceFields:
    return PriceFields(input_usd_per_mtok=input_rate, output_usd_per_mtok=output_rate,
                       cache_read_usd_per_mtok=cache_read, cache_write_usd_per_mtok=cache_write,
                       reasoning_usd_per_mtok=reasoning)


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


# hostile figures -------------------------------------------------------------------------
BIG = 2**70


@pytest.mark.parametrize(
    ("value", "required", "expected"),
    [
        (12, False, (12, None)),
        (0, True, (0, None)),
        (MAX_CALL_TOKENS, False, (MAX_CALL_TOKENS, None)),
        (12.0, False, (12, None)),  # a whole float is a count
        (None, False, (0, None)),  # absent and optional
        (None, True, (0, "missing_count")),
        (-1, False, (0, "negative_count")),
        (-1_000_000, True, (0, "negative_count")),
        (-0.5, False, (0, "negative_count")),
        (float("-inf"), False, (0, "negative_count")),
        (MAX_CALL_TOKENS + 1, False, (MAX_CALL_TOKENS, "absurd_count")),
        (BIG, False, (MAX_CALL_TOKENS, "absurd_count")),
        (2**64 - 1, False, (MAX_CALL_TOKENS, "absurd_count")),
        (1e308, False, (MAX_CALL_TOKENS, "absurd_count")),
        (float("inf"), False, (MAX_CALL_TOKENS, "absurd_count")),
        (float("nan"), False, (0, "wrong_type")),
        (12.5, False, (12, "wrong_type")),
        (True, False, (0, "wrong_type")),  # a bool is not a count
        (False, True, (0, "wrong_type")),
        ("12", False, (0, "wrong_type")),
        ("", False, (0, "wrong_type")),
        ([3], False, (0, "wrong_type")),
        ({"n": 3}, False, (0, "wrong_type")),
    ],
)
def test_clamp_count(value, required, expected):
    assert clamp_count(value, required=required) == expected


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        # a refund attempt: the main count is unusable, the call is settled from our count
        ({"prompt_tokens": -1_000_000, "completion_tokens": 5},
         Usage(output_tokens=5, flags=("negative_count",), trusted=False)),
        ({"prompt_tokens": BIG, "completion_tokens": 5},
         Usage(input_tokens=MAX_CALL_TOKENS, output_tokens=5, flags=("absurd_count",),
               trusted=False)),
        ({"prompt_tokens": True, "completion_tokens": "5"},
         Usage(flags=("wrong_type",), trusted=False)),
        ({"prompt_tokens": 10}, Usage(input_tokens=10, flags=("missing_count",), trusted=False)),
        ({}, Usage(flags=("missing_count",), trusted=False)),
        # details only: the main counts stand, cached input is charged as plain input
        ({"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": "x"},
         Usage(input_tokens=10, output_tokens=5, flags=("wrong_type",))),
        ({"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": None,
          "completion_tokens_details": {"reasoning_tokens": -3}},
         Usage(input_tokens=10, output_tokens=5, flags=("negative_count",))),
        # overlaps stay consistent: cached <= prompt, reasoning <= output
        ({"prompt_tokens": 10, "completion_tokens": 5,
          "prompt_tokens_details": {"cached_tokens": 50},
          "completion_tokens_details": {"reasoning_tokens": BIG}},
         Usage(cached_input_tokens=10, output_tokens=5, reasoning_tokens=5,
               flags=("absurd_count",))),
        ("lots", Usage(flags=("wrong_type",), trusted=False)),
        ([1, 2], Usage(flags=("wrong_type",), trusted=False)),
        (None, Usage(flags=("missing_count",), trusted=False)),
    ],
)
def test_openai_usage_is_clamped_and_flagged(usage, expected):
    assert from_openai(usage) == expected


def test_embeddings_report_no_output_and_are_not_flagged_for_it():
    assert from_openai({"prompt_tokens": 7, "total_tokens": 7},
                       output_expected=False) == Usage(input_tokens=7)


@pytest.mark.parametrize(
    ("usage", "output", "expected"),
    [
        ({"input_tokens": -5, "output_tokens": 3, "cache_read_input_tokens": "x"}, None,
         Usage(output_tokens=3, flags=("negative_count", "wrong_type"), trusted=False)),
        ({"input_tokens": 5, "output_tokens": 3, "cache_creation_input_tokens": BIG}, None,
         Usage(input_tokens=5, cache_write_tokens=MAX_CALL_TOKENS, output_tokens=3,
               flags=("absurd_count",))),
        ({"input_tokens": 5, "output_tokens": 1}, -7,
         Usage(input_tokens=5, flags=("negative_count",), trusted=False)),
        ({"input_tokens": 5}, None, Usage(input_tokens=5, flags=("missing_count",),
                                          trusted=False)),
        (["x"], 3, Usage(output_tokens=3, flags=("wrong_type",), trusted=False)),
    ],
)
def test_anthropic_usage_is_clamped_and_flagged(usage, output, expected):
    assert from_anthropic(usage, output) == expected


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"promptTokenCount": 100, "cachedContentTokenCount": 500, "candidatesTokenCount": 2},
         Usage(cached_input_tokens=100, output_tokens=2)),
        ({"promptTokenCount": 9}, Usage(input_tokens=9)),  # a blocked prompt: no candidates
        ({"promptTokenCount": 9, "thoughtsTokenCount": -1, "candidatesTokenCount": 2},
         Usage(input_tokens=9, output_tokens=2, flags=("negative_count",), trusted=False)),
        ({"promptTokenCount": "9"}, Usage(flags=("wrong_type",), trusted=False)),
    ],
)
def test_gemini_usage_is_clamped_and_flagged(meta, expected):
    assert from_gemini(meta) == expected


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from([
        "prompt_tokens", "completion_tokens", "input_tokens", "output_tokens",
        "prompt_tokens_details", "completion_tokens_details", "input_tokens_details",
        "output_tokens_details", "cached_tokens", "reasoning_tokens",
        "cache_read_input_tokens", "cache_creation_input_tokens", "promptTokenCount",
        "cachedContentTokenCount", "candidatesTokenCount", "thoughtsTokenCount", "x"]),
        children, max_size=6),
    max_leaves=20,
)


def _sane(usage: Usage) -> bool:
    counts = (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens,
              usage.output_tokens, usage.reasoning_tokens)
    return (all(isinstance(c, int) and 0 <= c <= 2 * MAX_CALL_TOKENS for c in counts)
            and usage.reasoning_tokens <= usage.output_tokens
            and set(usage.flags) <= set(USAGE_FLAGS))


@given(JSON_VALUES, JSON_VALUES)
def test_usage_parsers_never_raise_and_stay_in_bounds(value, extra):
    for usage in (from_openai(value), from_openai(value, output_expected=False),
                  from_anthropic(value), from_anthropic(value, extra), from_gemini(value)):
        assert _sane(usage), usage
        assert usage.trusted or usage.flags  # distrust always says why


@given(st.integers(min_value=0, max_value=MAX_CALL_TOKENS),
       st.integers(min_value=0, max_value=MAX_CALL_TOKENS))
def test_sane_figures_are_taken_as_they_are(prompt, completion):
    usage = from_openai({"prompt_tokens": prompt, "completion_tokens": completion})
    assert usage == Usage(input_tokens=prompt, output_tokens=completion)


def test_merge_flags_keeps_each_once_in_order():
    assert merge_flags(("a", "b"), (), ("b", "c")) == ("a", "b", "c")
