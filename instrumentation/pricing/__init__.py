"""USD prices per token, resolved once per model, and the per-call cost as plain float arithmetic.

The source of truth is the price data bundled with ``genai-prices`` (read offline, never updated over the network),
plus an optional overrides file named by ``SPENDWATCH_PRICES_FILE``. ``genai_prices.calc_price`` costs ~200 µs per
call, so it never runs per call: :meth:`PriceTable.lookup` resolves a model's text-token prices once into a
:class:`Price`, and :meth:`Price.cost` is a few multiplications::

    table = price_table_from_env()                    # raises ConfigError on a malformed overrides file
    price = table.lookup("gpt-4o-mini-2024-07-18")    # None means unpriced, never a $0 price
    if price is not None:
        usd = price.cost(input_tokens=1200, output_tokens=300, cache_read_tokens=1024)

A :class:`Price` covers every unit genai-prices prices for the model that a response reports (units.py): text
input, cached input and output, cache writes (and the part held for an hour), audio and image tokens in and out,
reasoning where priced on its own, tool calls, requests, characters and seconds of audio, tiered by context length;
a part without a price of its own is billed as its whole, as genai-prices bills it.

Overrides file (TOML, or JSON with the same structure when the name ends in ``.json``)::

    [models."my-finetune"]        # matched case-insensitively; also matches "my-finetune-2025-01-01"/"-20250101"
    input_per_mtok = 1.0          # USD per million input tokens, required
    output_per_mtok = 2.0         # USD per million output tokens, required (write 0 for an embedding model)
    cache_read_per_mtok = 0.5     # USD per million cached input tokens, optional, defaults to input_per_mtok
    cache_write_per_mtok = 1.25   # optional, like every other unit's key (units.UNITS: input_audio_per_mtok,
    web_search_per_call = 0.01    # per_request, audio_per_second...); a unit left out is billed as its whole

An override wins over the bundled data for every provider, service tier and batch mode, and for a call whichever of
its two names it is keyed on (:meth:`PriceTable.lookup_call`): an Azure deployment name or an alias overridden as the
request model beats the bundled price of the snapshot the response names.
"""

from spendwatch.instrumentation.pricing.bundled import OPENAI_COMPATIBLE
from spendwatch.instrumentation.pricing.overrides import PRICES_FILE_ENV, load_overrides
from spendwatch.instrumentation.pricing.price import USD_DECIMALS, Price, rounded_usd
from spendwatch.instrumentation.pricing.table import PriceTable, price_table_from_env

__all__ = [
    "OPENAI_COMPATIBLE",
    "Price",
    "PriceTable",
    "load_overrides",
    "price_table_from_env",
    "rounded_usd",
    "PRICES_FILE_ENV",
    "USD_DECIMALS",
]
