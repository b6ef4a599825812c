"""The differentiable Qwen-VL critic: r = logit(Yes) - logit(No) for N views and a question.

`QwenCritic` is what the Qwen-VL families share; `VLMCritic` is Qwen2.5-VL, and `critic.qwen3_vl`
adds Qwen3-VL on the same base. Per (descriptions, N, H, W) everything that does not depend on the
pixels — chat text, `input_ids`, attention mask, 3-D rope `position_ids`, `image_grid_thw` — is
built once with the real processor and the model's own `get_rope_index`, and cached. A call then
only preprocesses the pixels (`qwen_pixel_values`, differentiable) and runs the model. Nothing in
transformers is patched.

What a family changes is small and named here as hooks: its view-side multiple (patch × merge),
and how the vision tower's features of some images are handed back to the model when they are not
recomputed from pixels (`_image_features`, `_encoder_outputs`: the reference image's cached
features, or one view set judged against several descriptions).
"""

from __future__ import annotations

import collections
import contextlib
import inspect
import logging
import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..errors import InvalidInputError, UnsupportedModelError
from .layout import VIEW_LAYOUTS, ViewLayout, square_cell_tile, tile_views
from .preprocess import VIEW_SIDE_MULTIPLE, check_image_shape, qwen_image_grid, qwen_pixel_values
from .protocol import CriticOutput
from .queries import check_description_tokens, check_plain_text, format_query, markup_tokens, normalize_description, resolve_query

logger = logging.getLogger(__name__)

ANSWER_YES = "Yes"
ANSWER_NO = "No"
# Renderers produce values a few ulps outside [0, 1]; anything further out is a caller's bug.
RANGE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class PromptInputs:
    """The pixel-independent model inputs for B view sets of N images of one size (cached)."""

    chat_texts: tuple[str, ...]
    input_ids: torch.Tensor  # (B, L), left-padded when the questions differ in length
    attention_mask: torch.Tensor | None  # (B, L); None when there is no padding
    position_ids: torch.Tensor  # (3, B, L): the 3-D multimodal rope positions
    image_grid_thw: torch.Tensor  # (B * N, 3), on the model's device

    @property
    def sequence_length(self) -> int:
        """Tokens per sequence, image placeholders included."""
        return int(self.input_ids.shape[1])


def answer_token_ids(tokenizer: Any) -> tuple[int, int]:
    """The ids of "Yes" and "No" as the first answer token; raise if either is not a single token."""
    ids = {}
    for word in (ANSWER_YES, ANSWER_NO):
        pieces = tokenizer.encode(word, add_special_tokens=False)
        if len(pieces) != 1:
            raise UnsupportedModelError(
                f"The tokenizer splits '{word}' into {len(pieces)} tokens {pieces} "
                f"({tokenizer.convert_ids_to_tokens(pieces)}); the critic reads the logit of a single "
                "'Yes'/'No' token and cannot score with this tokenizer."
            )
        ids[word] = int(pieces[0])
    if ids[ANSWER_YES] == ids[ANSWER_NO]:
        raise UnsupportedModelError(f"The tokenizer maps 'Yes' and 'No' to the same id {ids[ANSWER_YES]}.")
    return ids[ANSWER_YES], ids[ANSWER_NO]


def check_image_values(images: torch.Tensor) -> None:
    """Raise InvalidInputError unless every value is finite and within [0, 1] (up to RANGE_TOLERANCE)."""
    with torch.no_grad():
        # One pass: min/max propagate NaN, and an infinity is out of range anyway.
        low, high = (float(value) for value in torch.aminmax(images.detach()))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InvalidInputError("Images contain NaN or infinite values.")
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise InvalidInputError(
            f"Image values must be in [0, 1]; got range [{low:.4g}, {high:.4g}]. "
            "Scale 8-bit images by 1/255, or clamp."
        )


def _checked_reference(reference: Any) -> torch.Tensor:
    """The reference image as a detached float32 (3, H, W) CPU tensor; InvalidInputError unless it is one image in [0, 1]."""
    if not isinstance(reference, torch.Tensor) or reference.ndim != 3:
        shape = tuple(reference.shape) if isinstance(reference, torch.Tensor) else type(reference).__name__
        raise InvalidInputError(f"The reference image must be a tensor (3, H, W) in [0, 1]; got {shape}.")
    check_image_shape(reference[None])
    check_image_values(reference)
    return reference.detach().to("cpu", torch.float32).clamp(0.0, 1.0)


def _accepts_mm_encoder_outputs(model: Any) -> bool:
    """Whether the multimodal model's forward takes precomputed vision features (transformers >= 5.18)."""
    return "mm_encoder_outputs" in inspect.signature(model.forward).parameters


#: One image's vision features as the critic hands them back to the model: the merged features the
#: image placeholders get, then any per-layer features a family adds (Qwen3-VL's deepstack layers).
ImageFeatures = tuple[torch.Tensor, ...]


class QwenCritic:
    """A Qwen-VL model as a differentiable yes/no critic of multi-view images of one object.

    The shared base of the Qwen families (`VLMCritic`: Qwen2.5-VL; `qwen3_vl.Qwen3VLCritic`); a
    family sets `family` and `view_multiple` and, where its vision features are more than one
    tensor per image, overrides `_image_features` / `_encoder_outputs`.

    Built from a loaded model and processor (e.g. `vlm3d_ttg.load_vlm`), a description of the
    object, and a query: 'dual' (the paper's, default), 'content', 'geometry', or a template with a
    `{description}` slot. Calling it with images (N, 3, H, W) in [0, 1] — any device, any float
    dtype, gradients allowed — returns a `CriticOutput` whose `r` is differentiable w.r.t. the
    images. Images (B, N, 3, H, W) score B view sets in one batched call; `descriptions` (length B)
    then gives each set its own description.

    `reference` (3, H, W) in [0, 1], any size — the image the shape is generated from — is shown
    before the views, and the built-in queries say so (`queries.builtin_query`); it is a constant
    of the critic (no gradient reaches it). `layout="grid"` tiles each view set into one image of
    square cells within `grid_size` px (default: the views' size; `layout.square_cell_tile`) before
    the critic sees it: about N× fewer vision tokens, at a lower resolution per view; the built-in
    queries then describe one tiled image. Views already of the cell's size are placed unresampled.

    The model is frozen (eval mode, no parameter gradients). `activation_checkpointing=True`
    recomputes each layer in the backward pass instead of storing its activations (the 7B needs
    ~11 GiB of activations for 4 x 448^2 views without it): it enables transformers' checkpointing
    with `use_reentrant=False` and switches the model to train() mode for the duration of each call
    (checkpointing only acts in train mode; the Qwen-VL models have no dropout, so outputs do not
    change).
    """

    #: The `critic.protocol.Critic` properties of the family (set by each family's class).
    family: str = ""
    view_multiple: int = 0

    def __init__(
        self,
        model: Any,
        processor: Any,
        description: str,
        query: str = "dual",
        *,
        reference: torch.Tensor | None = None,
        layout: ViewLayout = "separate",
        grid_size: int | None = None,
        activation_checkpointing: bool = False,
        check_inputs: bool = True,
        max_cached_prompts: int = 8,
    ) -> None:
        self.model = model
        self.processor = processor
        if layout not in VIEW_LAYOUTS:
            raise InvalidInputError(f"layout must be one of {VIEW_LAYOUTS}, got {layout!r}.")
        self.layout = layout
        if grid_size is not None and (isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 1):
            raise InvalidInputError(f"grid_size must be a positive number of pixels or None, got {grid_size!r}.")
        self.grid_size = grid_size
        self.reference = None if reference is None else _checked_reference(reference)
        self._reference_cache: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        self.template = resolve_query(query, reference=self.reference is not None, layout=layout)
        self.description = normalize_description(description)
        # What this processor reads as structure (it may know more tokens than Qwen2.5-VL's list
        # checked above); see queries.py for why such text is rejected rather than escaped.
        self._markup = markup_tokens(processor)
        self.question = self._plain_question(self.description)
        self.activation_checkpointing = activation_checkpointing
        self.check_inputs = check_inputs
        self.yes_id, self.no_id = answer_token_ids(processor.tokenizer)
        self._cache: collections.OrderedDict[tuple, PromptInputs] = collections.OrderedDict()
        self._max_cached_prompts = max(1, int(max_cached_prompts))

        image_processor = processor.image_processor
        if type(image_processor).__name__.endswith("Pil"):
            logger.warning(
                "%s resizes with PIL; the critic's torch preprocessing reproduces the torchvision "
                "Qwen2VLImageProcessor, so resized images will differ slightly from this processor's.",
                type(image_processor).__name__,
            )
        vision = model.config.vision_config
        if int(image_processor.patch_size) != int(vision.patch_size) or int(image_processor.merge_size) != int(
            vision.spatial_merge_size
        ):
            raise UnsupportedModelError(
                f"Processor patch/merge ({image_processor.patch_size}/{image_processor.merge_size}) do not match the "
                f"model's ({vision.patch_size}/{vision.spatial_merge_size})."
            )
        if int(image_processor.patch_size) * int(image_processor.merge_size) != self.view_multiple:
            raise UnsupportedModelError(
                f"This {self.family} checkpoint's processor cuts {image_processor.patch_size}-px patches merged "
                f"{image_processor.merge_size}x{image_processor.merge_size}, not the family's {self.view_multiple}-px "
                "multiple; load it as the family its config names (critic.families.build_critic)."
            )
        if any(parameter.requires_grad for parameter in model.parameters()):
            logger.info("Freezing the VLM's parameters: the critic only differentiates w.r.t. pixels.")
            model.requires_grad_(False)
        model.eval()
        if activation_checkpointing:
            # use_reentrant=True would break torch.autograd.grad w.r.t. the pixels.
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable({"use_reentrant": False})
            else:  # transformers releases before the rename
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            # Enabling checkpointing also hooks the input embeddings to require grad (meant for
            # adapters); with frozen weights that only adds a useless gradient buffer.
            model.disable_input_require_grads()

    def modules(self) -> list[torch.nn.Module]:
        """The critic's weights: the one VLM (what an idle-offload moves)."""
        return [self.model]

    # ----------------------------------------------------------------------------------------
    # Pixel-independent parts (cached)

    def chat_text(self, num_images: int, description: str | None = None) -> str:
        """The full prompt for `num_images` images (the reference included, if any): the processor's chat template, images then question."""
        question = self.question if description is None else self._plain_question(description)
        messages = [
            {
                "role": "user",
                "content": [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": question}],
            }
        ]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _plain_question(self, description: str) -> str:
        """The question for `description`, checked to contain no markup of this processor's tokenizer."""
        text = check_plain_text(normalize_description(description), self._markup, "description")
        check_description_tokens(text, self.processor)  # its length in this critic's own tokens
        return check_plain_text(format_query(self.template, description), self._markup, "question")

    def prompt_inputs(
        self, num_views: int, height: int, width: int, descriptions: Sequence[str] | None = None, *, batch: int = 1
    ) -> PromptInputs:
        """The cached pixel-independent inputs for `batch` view sets of `num_views` images of height x width.

        `descriptions` (one per view set; then `batch` is their number) overrides the critic's
        description. Raises InvalidInputError if the prompt is longer than the model's context.
        """
        if descriptions is None:
            descriptions = (self.description,) * batch
        descriptions = tuple(normalize_description(text) for text in descriptions)
        device = self._device()
        key = (descriptions, int(num_views), int(height), int(width), str(device))
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        built = self._build_prompt_inputs(descriptions, self.image_sizes(int(num_views), int(height), int(width)), device)
        self._cache[key] = built
        if len(self._cache) > self._max_cached_prompts:
            self._cache.popitem(last=False)
        return built

    def image_sizes(self, num_views: int, height: int, width: int) -> list[tuple[int, int]]:
        """The (height, width) of each image the model gets for `num_views` views of height x width, in order.

        The reference first (if any), then the views — or their one tile with layout "grid".
        """
        views = [self.tile_size(num_views, height, width)] if self.layout == "grid" else [(height, width)] * num_views
        if self.reference is None:
            return views
        return [(int(self.reference.shape[-2]), int(self.reference.shape[-1]))] + views

    def tile_size(self, num_views: int, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the one image that `num_views` views of height x width are tiled into (layout "grid")."""
        tile_height, tile_width, _ = square_cell_tile(num_views, self.grid_size or (height, width))
        return tile_height, tile_width

    def image_token_count(self, num_views: int, height: int, width: int) -> int:
        """Vision tokens (after Qwen's 2x2 merge) in one prompt for `num_views` views of height x width."""
        image_processor = self.processor.image_processor
        grids = [qwen_image_grid(h, w, image_processor) for h, w in self.image_sizes(num_views, height, width)]
        return sum(rows * columns for _, rows, columns in grids) // int(image_processor.merge_size) ** 2

    def _build_prompt_inputs(
        self, descriptions: tuple[str, ...], sizes: list[tuple[int, int]], device: torch.device
    ) -> PromptInputs:
        image_processor = self.processor.image_processor
        grids = [qwen_image_grid(h, w, image_processor) for h, w in sizes]  # validates the aspect ratios
        image_tokens = sum(grid[1] * grid[2] for grid in grids) // int(image_processor.merge_size) ** 2
        num_images = len(sizes)
        texts = tuple(self.chat_text(num_images, text) for text in descriptions)
        context = int(self.model.config.get_text_config().max_position_embeddings)
        # Cheap length check before the processor builds anything big.
        longest_text = max(len(self.processor.tokenizer.encode(text, add_special_tokens=False)) for text in texts)
        approx_length = longest_text - num_images + image_tokens
        if approx_length > context:
            raise InvalidInputError(
                f"The prompt is {approx_length} tokens ({num_images} images, {image_tokens} image tokens + text), "
                f"longer than the model's context of {context}. Use fewer or smaller views or a shorter description."
            )
        # The real processor expands <|image_pad|> and tokenizes. It needs images only for their size,
        # so blank ones of the right size do (once per key).
        blanks = [torch.zeros(3, h, w) for h, w in sizes] * len(texts)
        encoded = self.processor(
            text=list(texts),
            images=blanks,
            do_rescale=False,
            padding=True,
            padding_side="left",
            return_tensors="pt",
        )
        input_ids = encoded["input_ids"]
        if input_ids.shape[1] > context:
            raise InvalidInputError(
                f"The prompt is {input_ids.shape[1]} tokens, longer than the model's context of {context}."
            )
        grid = encoded["image_grid_thw"]
        if grid.tolist() != [list(g) for g in grids] * len(texts):
            raise UnsupportedModelError(
                f"The processor's image grids {grid.tolist()[:num_images]} differ from the critic's "
                f"{[list(g) for g in grids]} for images of sizes {sizes}; this processor configuration is not reproduced."
            )
        attention_mask = encoded["attention_mask"]
        mm_token_type_ids = encoded.get("mm_token_type_ids")
        if mm_token_type_ids is None:  # older processors: derive it from the placeholder ids
            mm_token_type_ids = (input_ids == self.model.config.image_token_id).long()
        # The silent trap (docs/design.md §4): without explicit 3-D positions the model falls back to 1-D
        # ones and r is quietly wrong. Compute them once with the model's own function.
        position_ids, _ = self.model.model.get_rope_index(
            input_ids,
            mm_token_type_ids=mm_token_type_ids,
            image_grid_thw=grid,
            attention_mask=attention_mask,
        )
        padded = not bool(attention_mask.all())
        logger.debug("Built critic prompt: %d set(s) of images %s -> %d tokens", len(texts), sizes, input_ids.shape[1])
        return PromptInputs(
            chat_texts=texts,
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device) if padded else None,
            position_ids=position_ids.to(device),
            # On the model's device like the stock path's inputs: the vision tower builds its rope
            # positions on the grid's device and multiplies them with tensors on the model's.
            image_grid_thw=grid.to(device),
        )

    # ----------------------------------------------------------------------------------------
    # Per call

    def _device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def _split_batch(
        self, images: torch.Tensor, descriptions: Sequence[str] | None
    ) -> tuple[torch.Tensor, int, bool, bool]:
        """(images as (B*N or N, 3, H, W), B, whether the output is batched, whether all sets share the views)."""
        if not isinstance(images, torch.Tensor):
            raise InvalidInputError(f"Images must be a torch.Tensor (N, 3, H, W) or (B, N, 3, H, W), got {type(images).__name__}.")
        if descriptions is not None and (isinstance(descriptions, str) or len(descriptions) == 0):
            raise InvalidInputError("descriptions must be a non-empty list of strings (one per view set).")
        if images.ndim == 5:
            batch = images.shape[0]
            if batch == 0:
                raise InvalidInputError("No view sets given (B = 0).")
            if descriptions is not None and len(descriptions) != batch:
                raise InvalidInputError(f"{len(descriptions)} descriptions for {batch} view sets; give one per set.")
            flat = images.reshape(batch * images.shape[1], *images.shape[2:])
            check_image_shape(flat)
            return flat, batch, True, False
        if images.ndim == 4:
            check_image_shape(images)
            if descriptions is None:
                return images, 1, False, False
            # The same views judged against several descriptions.
            return images, len(descriptions), True, True
        raise InvalidInputError(
            f"Images must have shape (N, 3, H, W) or (B, N, 3, H, W); got {tuple(images.shape)}."
        )

    @contextlib.contextmanager
    def _checkpointing_mode(self) -> Iterator[None]:
        if not self.activation_checkpointing:
            yield
            return
        was_training = self.model.training
        self.model.train()
        try:
            yield
        finally:
            self.model.train(was_training)

    def preprocess(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`qwen_pixel_values` of images (N, 3, H, W) with this critic's processor, on the model's device."""
        return qwen_pixel_values(images.to(self._device()), self.processor.image_processor)

    def __call__(self, images: torch.Tensor, descriptions: Sequence[str] | None = None) -> CriticOutput:
        """Score views (N, 3, H, W) — or B view sets (B, N, 3, H, W) — in [0, 1]; see the class docstring.

        With views (N, 3, H, W) and `descriptions` (length B), the same views are judged against each
        description (the vision tower runs once); r then has shape (B,).
        """
        views, batch, batched, shared_views = self._split_batch(images, descriptions)
        if self.check_inputs:
            check_image_values(views)
        num_views = views.shape[0] if shared_views else views.shape[0] // batch
        height, width = int(views.shape[-2]), int(views.shape[-1])
        prompt = self.prompt_inputs(num_views, height, width, descriptions, batch=batch)
        view_sets = 1 if shared_views else batch
        if self.layout == "grid":
            views = tile_views(views.reshape(view_sets, num_views, *views.shape[1:]), self.tile_size(num_views, height, width))
        pixel_values, view_grid = self.preprocess(views)
        z_yes, z_no = self._answer_logits(prompt, pixel_values, view_grid, view_sets=view_sets, repeats=batch if shared_views else 1)
        r = z_yes - z_no
        if not batched:
            z_yes, z_no, r = z_yes[0], z_no[0], r[0]
        return CriticOutput(r=r, p_yes=torch.sigmoid(r), logit_yes=z_yes, logit_no=z_no)

    def reference_features(self) -> ImageFeatures:
        """The vision tower's features of the reference image (cached per device and dtype; no gradient).

        Qwen-VL vision towers attend within each image only, so the reference's features do not
        depend on the views: they are computed once, not at every call, and no activation of the
        vision tower is kept for them.
        """
        if self.reference is None:
            raise InvalidInputError("This critic has no reference image.")
        device, dtype = self._device(), self.model.get_input_embeddings().weight.dtype
        key = (str(device), dtype)
        cached = self._reference_cache.get(key)
        if cached is None:
            self._reference_cache.clear()  # the model moved (offloading): the old copy is dead weight
            with torch.no_grad():
                pixels, grid = qwen_pixel_values(self.reference[None].to(device), self.processor.image_processor)
                (cached,) = self._image_features(pixels, grid)
            self._reference_cache[key] = cached
        return cached

    # ----------------------------------------------------------------------------------------
    # Family hooks: vision features handed back to the model

    def _image_features(self, pixel_values: torch.Tensor, grid: torch.Tensor) -> list[ImageFeatures]:
        """The vision tower's features of each image in `pixel_values`, in order (the model's own `get_image_features`)."""
        output = self.model.model.get_image_features(pixel_values, grid.to(pixel_values.device), return_dict=True)
        return [(features,) for features in output.pooler_output]

    def _encoder_outputs(self, features: Sequence[ImageFeatures]) -> Any:
        """The model's `mm_encoder_outputs["image"]` for the images of the whole batch, in prompt order."""
        return BaseModelOutputWithPooling(pooler_output=tuple(image[0] for image in features))

    def _embeds_with_features(self, input_ids: torch.Tensor, features: Sequence[ImageFeatures]) -> torch.Tensor:
        """Input embeddings with `features` placed, for a model without `mm_encoder_outputs`; a family that needs this implements it."""
        raise UnsupportedModelError(
            f"This transformers release's {type(self.model).__name__} takes no precomputed vision features "
            "(`mm_encoder_outputs`, transformers >= 5.18), which a reference image or several descriptions per view "
            "set need; upgrade transformers."
        )

    def _answer_logits(
        self, prompt: PromptInputs, pixel_values: torch.Tensor, view_grid: torch.Tensor, *, view_sets: int, repeats: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with self._checkpointing_mode():
            if repeats > 1 or self.reference is not None:
                # Several questions about the same views, or a reference image: encode the views once and
                # hand each sequence its images' features — the cached reference's first, then its view
                # set's (the model's own `mm_encoder_outputs` input).
                features = self._image_features(pixel_values, view_grid)
                per_set = len(features) // view_sets
                prefix = [self.reference_features()] if self.reference is not None else []
                ordered = [
                    feature
                    for index in range(view_sets)
                    for feature in prefix + features[index * per_set:(index + 1) * per_set]
                ] * repeats
                if _accepts_mm_encoder_outputs(self.model.model):
                    image_inputs: dict[str, Any] = {"mm_encoder_outputs": {"image": self._encoder_outputs(ordered)}}
                else:
                    image_inputs = {"inputs_embeds": self._embeds_with_features(prompt.input_ids, ordered)}
            else:
                image_inputs = {"pixel_values": pixel_values}
            outputs = self.model.model(
                # With inputs_embeds the ids are already embedded; passing both is ambiguous.
                input_ids=None if "inputs_embeds" in image_inputs else prompt.input_ids,
                attention_mask=prompt.attention_mask,
                position_ids=prompt.position_ids,
                image_grid_thw=prompt.image_grid_thw,
                use_cache=False,
                **image_inputs,
            )
        last_hidden = outputs.last_hidden_state[:, -1]  # left padding: the last position is real for all rows
        head = self.model.get_output_embeddings()
        weight = getattr(head, "weight", None)
        if isinstance(head, torch.nn.Linear) and weight is not None and weight.is_floating_point():
            # Only the two rows we need, in fp32: a finer r than bf16 logits, and no vocab-sized matmul.
            dtype = torch.promote_types(last_hidden.dtype, torch.float32)  # float64 stays float64
            rows = weight[[self.yes_id, self.no_id]].to(dtype)
            logits = last_hidden.to(dtype) @ rows.T
            if head.bias is not None:
                logits = logits + head.bias[[self.yes_id, self.no_id]].to(dtype)
            return logits[:, 0], logits[:, 1]
        logits = head(last_hidden)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return logits[:, self.yes_id], logits[:, self.no_id]




class VLMCritic(QwenCritic):
    """Qwen2.5-VL as the critic (the paper's): 14-px patches merged 2×2, so views of a multiple of 28 px
    reach it unresampled. See `QwenCritic` for how it is built and called."""

    family = "qwen2.5-vl"
    view_multiple = VIEW_SIDE_MULTIPLE

    def _embeds_with_features(self, input_ids: torch.Tensor, features: Sequence[ImageFeatures]) -> torch.Tensor:
        """Token embeddings with the image features in the image placeholders, as the model's forward builds them.

        For transformers < 5.18, whose model has no `mm_encoder_outputs` input: the same steps as
        its forward with `pixel_values` (embed, `get_placeholder_mask`, `masked_scatter`), fed
        precomputed features.
        """
        inner = self.model.model
        embeds = inner.get_input_embeddings()(input_ids)
        image_embeds = torch.cat([image[0] for image in features], dim=0).to(embeds.device, embeds.dtype)
        image_mask, _ = inner.get_placeholder_mask(input_ids, inputs_embeds=embeds, image_features=image_embeds)
        return embeds.masked_scatter(image_mask, image_embeds)


__all__ = ["CriticOutput", "ImageFeatures", "PromptInputs", "QwenCritic", "VLMCritic", "answer_token_ids", "check_image_values"]
