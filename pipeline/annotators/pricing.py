"""Token prices and cost estimates (configurable: ``annotate.prices`` in the YAML config).

Prices are USD per million tokens. A dated model name (``gpt-4o-2024-08-06``) uses the price of
its longest listed prefix (``gpt-4o``). Models served locally (vLLM, Ollama, llama.cpp) cost
nothing: list them with zero prices, or leave them out and run without ``--max-cost``.
Token counts before a request is sent are estimates (about four characters per token for
English JSON, the ratio OpenAI documents); after the request the server's reported usage is used.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

CHARS_PER_TOKEN = 4.0
# Chat formatting adds a few tokens per message on top of the text.
TOKENS_PER_MESSAGE = 4
BATCH_DISCOUNT = 0.5  # the Batch API bills half the synchronous price


class ModelPrice(BaseModel):
    """USD per million input and output tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_million: float
    output_per_million: float


DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-4o": ModelPrice(input_per_million=2.50, output_per_million=10.00),
    "gpt-4o-mini": ModelPrice(input_per_million=0.15, output_per_million=0.60),
    "gpt-4.1": ModelPrice(input_per_million=2.00, output_per_million=8.00),
    "gpt-4.1-mini": ModelPrice(input_per_million=0.40, output_per_million=1.60),
    "gpt-4.1-nano": ModelPrice(input_per_million=0.10, output_per_million=0.40),
}


class PriceTable:
    """Looks up prices by model name (longest matching prefix) and prices token counts."""

    def __init__(self, overrides: dict[str, ModelPrice] | None = None):
        self.prices = {**DEFAULT_PRICES, **(overrides or {})}

    def price(self, model: str) -> ModelPrice | None:
        matches = [name for name in self.prices if model == name or model.startswith(name + "-")]
        return self.prices[max(matches, key=len)] if matches else None

    def cost(self, model: str, input_tokens: int, output_tokens: int, batch: bool = False) -> float:
        """Estimated USD for one request (0 for a model without a listed price)."""
        price = self.price(model)
        if price is None:
            return 0.0
        usd = (input_tokens * price.input_per_million + output_tokens * price.output_per_million) / 1e6
        return usd * (BATCH_DISCOUNT if batch else 1.0)


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    """Input tokens of a chat request, estimated before sending it."""
    chars = sum(len(m["content"]) for m in messages)
    return int(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(messages)
