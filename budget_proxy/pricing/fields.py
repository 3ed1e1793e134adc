"""A price's fields: the one model that catalog entries (`catalog.ModelPrice`) and stored
price versions (`book.PriceVersion`) share, with the one fallback rule for a rate a model
does not have (cache reads and writes at the input rate, reasoning at the output rate)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Tier = Literal["local_lightweight", "local_midweight", "remote_heavyweight"]
Mode = Literal["chat", "completion", "embedding", "responses", "image_generation",
               "audio_speech", "audio_transcription"]
PriceType = Literal["token", "character", "image", "time", "fixed"]
Price = Annotated[Decimal, Field(ge=0)]

PRICE_FIELDS = (
    "input_usd_per_mtok",
    "output_usd_per_mtok",
    "cache_read_usd_per_mtok",
    "cache_write_usd_per_mtok",
    "reasoning_usd_per_mtok",
)

# prices of the seed's other price types: exact USD per unit, None when the model has none
UNIT_PRICE_FIELDS = (
    "input_usd_per_char",  # USD per input character (text to speech)
    "usd_per_image",  # USD per image generated, when no size/quality price applies
    "usd_per_second",  # USD per second of audio (transcription, translation)
    "usd_per_request",  # USD per call, on top of every other price
)
# the seed's `ProviderPricing` name of each (a USD float in price views)
SEED_UNIT_NAMES = {
    "input_usd_per_char": "input_cost_per_char",
    "usd_per_image": "cost_per_image",
    "usd_per_second": "cost_per_second",
    "usd_per_request": "fixed_cost_per_request",
}


def first_price(price: Decimal | None, fallback: Decimal) -> Decimal:
    return price if price is not None else fallback


def _refuse_floats(value: Any) -> Any:
    if isinstance(value, bool | float):
        raise ValueError("prices must be decimal strings or Decimal, not floats")
    return value


class PriceFields(BaseModel):
    """A price's fields, the one home of them: the catalog's entries (`ModelPrice`) and the
    stored versions (`PriceVersion`) both are these plus their identity.

    Token rates are USD per million tokens; input and output are always present (zero for
    local runtimes, embedding output and models priced by other units). A ``None`` optional
    token rate means the provider has no such rate: cache reads and cache writes are billed
    at the input rate, reasoning tokens at the output rate (the one fallback rule,
    `usage.cost_of`). The seed's other price types (`UNIT_PRICE_FIELDS`) are exact USD per
    unit; ``usd_per_image_by_size`` prices an image by ``"size"`` or ``"quality/size"``
    (``"hd/1024x1792"``), ``usd_per_image`` any other image; ``usd_per_tool_call`` a call of
    a built-in tool by its name (``web_search``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_usd_per_mtok: Price
    output_usd_per_mtok: Price
    cache_read_usd_per_mtok: Price | None = None
    cache_write_usd_per_mtok: Price | None = None
    reasoning_usd_per_mtok: Price | None = None
    input_usd_per_char: Price | None = None
    usd_per_image: Price | None = None
    usd_per_image_by_size: dict[str, Price] = Field(default_factory=dict)
    usd_per_second: Price | None = None
    usd_per_request: Price | None = None
    # USD per call of a built-in tool (Responses API: `web_search`, `file_search`, ...)
    usd_per_tool_call: dict[str, Price] = Field(default_factory=dict)
    context_window_tokens: int | None = Field(default=None, gt=0)
    max_output_tokens: int | None = Field(default=None, gt=0)
    tier: Tier = "remote_heavyweight"
    mode: Mode = "chat"

    @field_validator(*PRICE_FIELDS, *UNIT_PRICE_FIELDS, mode="before")
    @classmethod
    def _no_binary_floats(cls, value: Any) -> Any:
        """Refuse floats: 0.1 as a float is not 0.1, and prices must add up exactly."""
        return _refuse_floats(value)

    @field_validator("usd_per_image_by_size", "usd_per_tool_call", mode="before")
    @classmethod
    def _no_binary_float_images(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for price in value.values():
                _refuse_floats(price)
        return value

    def __hash__(self) -> int:  # frozen, with one mapping field
        return hash(tuple(frozenset(v.items()) if isinstance(v, dict) else v
                          for v in self.__dict__.values()))

    # the one fallback rule for a missing rate
    @property
    def cache_read_rate(self) -> Decimal:
        """Rate for cached input tokens, falling back to the input rate."""
        return first_price(self.cache_read_usd_per_mtok, self.input_usd_per_mtok)

    @property
    def cache_write_rate(self) -> Decimal:
        """Rate for cache-write input tokens, falling back to the input rate."""
        return first_price(self.cache_write_usd_per_mtok, self.input_usd_per_mtok)

    @property
    def reasoning_rate(self) -> Decimal:
        """Rate for reasoning tokens, falling back to the output rate."""
        return first_price(self.reasoning_usd_per_mtok, self.output_usd_per_mtok)

    @property
    def price_type(self) -> PriceType:
        """The seed's price type: what this model is mainly billed by."""
        if self.usd_per_image is not None or self.usd_per_image_by_size:
            return "image"
        if self.input_usd_per_char is not None:
            return "character"
        if self.usd_per_second is not None:
            return "time"
        if self.usd_per_request is not None and not (
                self.input_usd_per_mtok or self.output_usd_per_mtok):
            return "fixed"
        return "token"

    def image_price(self, size: str, quality: str) -> Decimal | None:
        """USD for one image of this size and quality: the ``quality/size`` price, else the
        ``size`` price, else ``usd_per_image``; None when the model has no image price."""
        by_size = self.usd_per_image_by_size
        found = by_size.get(f"{quality}/{size}") or by_size.get(size)
        return found if found is not None else self.usd_per_image

    @property
    def dearest_image(self) -> Decimal | None:
        """The most one image can cost (the worst case of a request that names no size)."""
        prices = [*self.usd_per_image_by_size.values(), *(
            [self.usd_per_image] if self.usd_per_image is not None else [])]
        return max(prices) if prices else None
