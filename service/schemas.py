"""Request and response bodies (the OpenAPI schema, with Chinese examples)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from runtime.errors import DataError
from sources.catalog import MAX_ID_CHARS, item_id

FilterValue = str | int | float | bool
Filter = dict[str, FilterValue | list[FilterValue]]
TOP_K_MAX = 2048  # the index's limit; the service's own (CNCLIP_LIMITS__MAX_TOP_K) is lower
EXAMPLE_B64 = "/9j/4AAQSkZJRgABAQ...（JPEG 或 PNG 的 base64）"


class ImageInput(BaseModel):
    """An image: ``base64`` (optionally a ``data:`` URL) or ``url``; exactly one."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"url": "https://example.com/shoes.jpg"}]},
    )
    base64: str | None = Field(None, description="The encoded image (JPEG, PNG, WebP ...).")
    url: str | None = Field(None, description="An http(s) URL the service fetches.")
    _raw: bytes | None = PrivateAttr(None)  # set for multipart uploads

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageInput:
        if (self.base64 is None) == (self.url is None):
            raise ValueError("give exactly one of base64 or url")
        return self


class BoostSpec(BaseModel):
    """A business boost on a numeric field: ``score x (1 + weight x transform(value))``,
    applied to the retrieved candidates after fusion."""

    model_config = ConfigDict(extra="forbid")
    field: str = Field(..., min_length=1, description="A numeric metadata field.")
    weight: float = Field(..., ge=-10.0, le=10.0, description="How much it counts.")
    transform: Literal["none", "log1p", "sqrt"] = Field(
        "none", description="Applied to the value first (log1p for counts such as sales)."
    )


class SearchOptions(BaseModel):
    top_k: int = Field(10, ge=1, le=TOP_K_MAX, description="How many results.")
    filter: Filter | None = Field(
        None,
        description="Attribute filter: every key must match (a list matches any of it).",
        examples=[{"category": ["连衣裙", "半身裙"]}],
    )
    exclude: Filter | None = Field(
        None,
        description="Attributes results must not have: an item matching any key is left out.",
        examples=[{"colour": "红色"}],
    )
    nprobe: int | None = Field(
        None, ge=1, le=TOP_K_MAX, description="IVF lists to visit (default: the tuned value)."
    )
    min_relevance: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Drop results whose relevance (the index's calibrated probability that "
        "an item is relevant, in [0, 1]) is lower; default: the service's setting for text "
        "queries (CNCLIP_SEARCH__MIN_RELEVANCE), 0 for image queries.",
        examples=[0.5],
    )
    group_by: str | None = Field(
        None,
        min_length=1,
        description="Collapse results sharing this field (several pictures of one product: "
        "spu) into one, its best.",
        examples=["spu"],
    )
    group_size: int = Field(
        1,
        ge=1,
        le=20,
        description="With group_by: how many items of each group to list.",
        examples=[3],
    )
    boost: list[BoostSpec] | None = Field(
        None,
        max_length=8,
        description="Boosts on numeric fields, applied after fusion.",
        examples=[[{"field": "sales", "weight": 0.1, "transform": "log1p"}]],
    )
    explain: bool = Field(
        False, description="Return how each result's score was made.", examples=[True]
    )


class TextOptions(SearchOptions):
    mode: Literal["vector", "lexical", "hybrid"] | None = Field(
        None,
        description="vector (CLIP), lexical (BM25 over titles: brands, model codes) or hybrid "
        "(both, fused); default: hybrid where the index has a lexical index, else vector.",
        examples=["hybrid"],
    )
    fusion: Literal["rrf", "weighted"] = Field(
        "rrf",
        description="Hybrid fusion: reciprocal rank (k = 60) or weighted scores (alpha).",
        examples=["weighted"],
    )
    alpha: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Weighted fusion: the vector side's weight.",
        examples=[0.7],
    )
    understand: bool = Field(
        True,
        description="Read negation (不要/不含/除了 ...) and attribute words (colours, kinds, "
        "brands of this catalog) as filters; the reading is returned as 'interpreted' "
        "(不要红色的杯子: must kind 杯子, must_not colour 红色).",
        examples=[True],
    )


class TextSearchRequest(TextOptions):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"query": "红色连衣裙", "top_k": 10, "filter": {"category": "女装"}},
                {"query": "不要红色的杯子", "mode": "hybrid", "min_relevance": 0.5},
                {"query": "安踏 SB-1024", "group_by": "spu", "explain": True},
            ]
        },
    )
    query: str = Field(..., max_length=100_000, description="The query text (Chinese).")


class ImageSearchRequest(SearchOptions):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"image": {"base64": EXAMPLE_B64}, "top_k": 10, "target": "images"}]
        },
    )
    image: ImageInput
    target: Literal["images", "texts"] = Field(
        "images", description="Search the image catalog, or the text corpus (image to text)."
    )


class MultimodalSearchRequest(TextOptions):
    """A text and/or an image: the weighted sum of their unit embeddings, normalized
    again ("this photo, but 蓝色的")."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "text": "蓝色的",
                    "image": {"base64": EXAMPLE_B64},
                    "text_weight": 0.5,
                    "image_weight": 1.0,
                    "group_by": "spu",
                }
            ]
        },
    )
    text: str | None = Field(None, max_length=100_000, description="The query text (Chinese).")
    image: ImageInput | None = None
    text_weight: float = Field(
        1.0, ge=0.0, le=100.0, description="The text embedding's weight.", examples=[0.5]
    )
    image_weight: float = Field(
        1.0, ge=0.0, le=100.0, description="The image embedding's weight.", examples=[1.0]
    )

    @model_validator(mode="after")
    def _something(self) -> MultimodalSearchRequest:
        if self.text is None and self.image is None:
            raise ValueError("give a text, an image, or both")
        weights = (self.text_weight if self.text is not None else 0.0) + (
            self.image_weight if self.image is not None else 0.0
        )
        if weights == 0.0:
            raise ValueError("the weights of what is given cannot all be 0")
        return self


class SearchItem(BaseModel):
    id: str
    score: float = Field(
        ...,
        description="What orders the results: the cosine (vector mode), BM25 (lexical) or "
        "the fused score (hybrid), after negation penalties and boosts.",
    )
    relevance: float = Field(
        ...,
        description="The calibrated probability that the item is relevant, in [0, 1] (the "
        "share of the query's words its title holds where that is higher).",
    )
    metadata: dict[str, Any] = Field(default_factory=dict)
    group: dict[str, Any] | None = Field(None, description="With group_by: the group's items.")
    explain: dict[str, Any] | None = Field(None, description="With explain: the score's parts.")


class Interpreted(BaseModel):
    text: str = Field(..., description="What was embedded and matched.")
    must: dict[str, Any] = Field(default_factory=dict)
    must_not: dict[str, list[str]] = Field(default_factory=dict)
    negated: list[str] = Field(
        default_factory=list, description="Negated phrases no attribute holds (a penalty)."
    )


class SearchResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "id": "sku-1001",
                            "score": 0.412,
                            "relevance": 0.93,
                            "metadata": {"title": "蓝色的杯子", "colour": "蓝色"},
                        }
                    ],
                    "index_version": "v0003",
                    "truncated": False,
                    "mode": "hybrid",
                    "interpreted": {
                        "text": "杯子",
                        "must": {"kind": "杯子"},
                        "must_not": {"colour": ["红色"]},
                        "negated": [],
                    },
                }
            ]
        }
    )
    items: list[SearchItem]
    index_version: str
    truncated: bool = Field(False, description="The query had over 50 word pieces and was cut.")
    mode: str = Field("vector", description="The mode that ran.")
    interpreted: Interpreted | None = Field(
        None, description="How the query was read (text queries with understand on)."
    )
    hint: str | None = Field(
        None, description="Why there are no items, when there are none, and what to try."
    )


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "image": {"base64": EXAMPLE_B64},
                    "labels": ["猫", "狗", "汽车"],
                    "templates": ["一张{}的照片。", "{}的图片。"],
                }
            ]
        },
    )
    image: ImageInput
    labels: list[str] = Field(..., min_length=1, description="Candidate labels, in Chinese.")
    templates: list[str] | None = Field(
        None,
        min_length=1,
        description="Prompt templates with one '{}' for the label (default: the service's).",
    )
    top_k: int | None = Field(None, ge=1, description="Return only the best k labels.")

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: list[str]) -> list[str]:
        cleaned = [label.strip() for label in labels]
        if any(not label for label in cleaned):
            raise ValueError("labels must not be empty")
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("labels must be distinct")
        return cleaned

    @field_validator("templates")
    @classmethod
    def _templates(cls, templates: list[str] | None) -> list[str] | None:
        if templates is not None and any(t.count("{}") != 1 for t in templates):
            raise ValueError("each template must contain exactly one '{}' for the label")
        return templates


class LabelScore(BaseModel):
    label: str
    probability: float = Field(..., description="Softmax of logit scale x cosine.")
    score: float = Field(..., description="Cosine similarity.")


class ClassifyResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "labels": [
                        {"label": "猫", "probability": 0.93, "score": 0.31},
                        {"label": "狗", "probability": 0.06, "score": 0.28},
                    ],
                    "templates": 2,
                }
            ]
        }
    )
    labels: list[LabelScore]
    templates: int = Field(..., description="How many templates were ensembled.")


class EmbedTextRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"texts": ["红色连衣裙", "白色运动鞋"]}]}
    )
    texts: list[str] = Field(..., min_length=1)


class EmbedImageRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"images": [{"base64": EXAMPLE_B64}]}]}
    )
    images: list[ImageInput] = Field(..., min_length=1)


class EmbedResponse(BaseModel):
    embeddings: list[list[float]] = Field(..., description="L2-normalized rows.")
    dim: int
    model_id: str | None = Field(
        ..., description="The embedding space: vectors of equal model ids compare."
    )
    bundle_id: str = Field(..., description="The bundle that computed them.")
    truncated: list[int] = Field(
        default_factory=list, description="Indices of texts cut to 50 word pieces."
    )


class CatalogItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(
        ...,
        min_length=1,
        max_length=MAX_ID_CHARS,
        description="A one-line string; an integer is taken as its decimal text "
        "(the catalog rules of sources/catalog.py).",
    )

    @field_validator("id", mode="before")
    @classmethod
    def _catalog_id(cls, value: Any) -> str:
        try:
            return item_id(value, "id")
        except DataError as exc:
            raise ValueError(str(exc)) from None

    image: ImageInput
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="Stored with the item; string, number and boolean values can be filtered.",
        examples=[{"title": "白色运动鞋", "category": "鞋靴", "price": 299}],
    )


class CatalogAddRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[CatalogItem] = Field(..., min_length=1)


class CatalogDeleteRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"ids": ["sku-1001"]}]}
    )
    ids: list[str] = Field(..., min_length=1)


class CatalogInfo(BaseModel):
    version: str
    count: int = Field(..., description="Live items.")
    deleted: int
    factory: str
    model_id: str | None = Field(..., description="The model whose vectors the index holds.")
    bundle_id: str | None = Field(..., description="The bundle that built it.")
    texts: int | None = Field(None, description="Items of the text corpus, when there is one.")


class CatalogChange(BaseModel):
    version: str
    count: int
    changed: int = Field(..., description="Items added or removed.")


class Status(BaseModel):
    status: str
    model_id: str | None = None
    bundle_id: str | None = None
    index_version: str | None = None
