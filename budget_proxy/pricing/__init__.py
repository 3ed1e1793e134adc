"""Prices: what a call costs.

- `fields`: a price's fields (token, character, image, time and fixed prices), one model
  for catalog entries and stored versions, and the fallback rule for a missing rate;
- `catalog`: the packaged catalog and the name resolution run on every request;
- `book`: the catalog with stored price versions laid over it, and the price views;
- `tools`: a call's cost line by line;
- `sources` and `update`: where new prices come from, and the scheduled update.

Prices are exact decimals; costs are computed by `budget_proxy.usage.cost_of`.
"""

from __future__ import annotations

from budget_proxy.pricing.book import (
    PRICE_HEAD_KIND,
    PRICE_VERSION_KIND,
    VERSION_FIELDS,
    PriceBook,
    PriceRecord,
    PriceVersion,
    PriceWriteError,
    as_utc,
    price_changes,
    price_fields_view,
)
from budget_proxy.pricing.catalog import (
    CEILING_MODEL,
    LOCAL_PROVIDERS,
    PROVIDER_ALIASES,
    PROVIDER_PREFERENCE,
    SOURCE_CATALOG_PATH,
    WILDCARD,
    ModelPrice,
    PriceCatalog,
    UnknownPriceRule,
    VersionedPrice,
    default_catalog_path,
    local_model_billions,
)
from budget_proxy.pricing.fields import (
    PRICE_FIELDS,
    UNIT_PRICE_FIELDS,
    Mode,
    PriceFields,
    PriceType,
    Tier,
)
from budget_proxy.pricing.tools import cost_breakdown

__all__ = [
    "CEILING_MODEL",
    "LOCAL_PROVIDERS",
    "PRICE_FIELDS",
    "PRICE_HEAD_KIND",
    "PRICE_VERSION_KIND",
    "PROVIDER_ALIASES",
    "PROVIDER_PREFERENCE",
    "SOURCE_CATALOG_PATH",
    "UNIT_PRICE_FIELDS",
    "VERSION_FIELDS",
    "WILDCARD",
    "Mode",
    "ModelPrice",
    "PriceBook",
    "PriceCatalog",
    "PriceFields",
    "PriceRecord",
    "PriceType",
    "PriceVersion",
    "PriceWriteError",
    "Tier",
    "UnknownPriceRule",
    "VersionedPrice",
    "as_utc",
    "cost_breakdown",
    "default_catalog_path",
    "local_model_billions",
    "price_changes",
    "price_fields_view",
]
