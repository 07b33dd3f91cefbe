"""CoLLM: a vision tower `f`, an image adapter `g`, an LLM `Φ` and a projection `p` (CoLLM §3.1).

    query  c = p(Φ([g(f(v_ref)); prompt + modification text]))      (get_query_embeds)
    target z = f(v_target)                                          (get_image_embeds)

Both are L2-normalised; retrieval ranks the gallery by cosine similarity. The towers are built from the
sub-configs (`AutoModel.from_config`), never copied, so any transformers vision tower and any decoder LLM plug in.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init

from .configuration_collm import CoLLMConfig
from .outputs import CoLLMContrastiveInputs, CoLLMOutput
from .image_adapter import CoLLMImageAdapter, CoLLMPatchAdapter, build_image_adapter, reference_patch_features
from .input_checks import check_embeds, check_pixel_values, check_query_tokens, check_reference_embeds
from .losses import contrastive_loss, distinct_rows, similarity_logits
from .synthesis import concat_padded_queries, synthesize_composed_queries
from .vision_families import build_vision_projection, build_vision_tower, pool_vision_output, vision_tower_outputs


class CoLLMPreTrainedModel(PreTrainedModel):
    config: CoLLMConfig
    config_class = CoLLMConfig
    base_model_prefix = "collm"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # The loss is a contrastive mean over the batch: Trainer must not pass or rescale by num_items_in_batch.
    accepts_loss_kwargs = False

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, CoLLMModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
        if isinstance(module, CoLLMPatchAdapter):
            init.normal_(module.position_embeddings, std=self.config.text_config.initializer_range
                         if hasattr(self.config.text_config, "initializer_range") else 0.02)
            if module.resample:
                init.normal_(module.queries, std=0.02)


class CoLLMModel(CoLLMPreTrainedModel):
    r"""The CoLLM retrieval model.

    Example:

    ```python
    >>> import torch
    >>> from collm_hf import CoLLMConfig, CoLLMModel
    >>> config = CoLLMConfig()  # tiny defaults, random weights
    >>> model = CoLLMModel(config).eval()
    >>> gallery = model.get_image_embeds(torch.randn(2, 3, 32, 32))
    >>> gallery.shape
    torch.Size([2, 32])
    ```
    """

    def __init__(self, config: CoLLMConfig):
        super().__init__(config)
        self.vision_tower = build_vision_tower(config.vision_config)
        self.vision_projection = build_vision_projection(
            config.vision_family, config.vision_feature_dim, config.vision_projection_dim
        )
        self.language_model = AutoModel.from_config(config.text_config)
        self._build_new_modules()
        self.post_init()
        self.apply_vision_freezing()

    def _build_new_modules(self):
        """The modules CoLLM adds to the two pretrained towers: adapter `g`, projection `p`, logit scale."""
        config = self.config
        self.adapter = build_image_adapter(config)
        self.projection = nn.Linear(config.text_config.hidden_size, config.projection_dim)
        self.logit_scale = nn.Parameter(
            torch.tensor(config.logit_scale_init_value), requires_grad=config.learnable_logit_scale
        )

    def apply_vision_freezing(self):
        """Freeze (or unfreeze) the vision tower and its projection as `config.freeze_vision_tower` says."""
        trainable = not self.config.freeze_vision_tower
        for module in (self.vision_tower, self.vision_projection):
            if module is not None:
                module.requires_grad_(trainable)
        self.logit_scale.requires_grad_(self.config.learnable_logit_scale)

    def train(self, mode: bool = True):
        """As `nn.Module.train`, but a frozen vision tower stays in eval mode (batch-norm statistics, dropout), so
        training leaves its gallery embeddings unchanged."""
        super().train(mode)
        self.vision_tower.train(mode and not self.config.freeze_vision_tower)
        return self

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, allow_pickle: bool = False, **kwargs):
        """Load a saved CoLLM. Weights are read from safetensors only unless `allow_pickle=True`.

        A checkpoint lacking weights raises `MissingWeightsError` naming them; extra weights only warn
        (`collm_hf.models.collm.safe_loading`). Other arguments are those of `PreTrainedModel.from_pretrained`.
        """
        from .safe_loading import checked_from_pretrained

        loaded = checked_from_pretrained(
            super().from_pretrained, pretrained_model_name_or_path, *args, allow_pickle=allow_pickle, **kwargs
        )
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, info) with output_loading_info
        # Loading re-creates parameters (requires_grad=True); re-apply the config's freezing afterwards.
        model.apply_vision_freezing()
        return loaded

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus the files that make the folder a SentenceTransformer
        (`sentence_transformers_files.py`; with the processor saved beside it, `SentenceTransformer(folder)` works)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if args[0] if args else kwargs.get("is_main_process", True):
            from .sentence_transformers_files import write_sentence_transformers_config

            write_sentence_transformers_config(save_directory)

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    # ----------------------------------------------------------------------------------------------------------
    # Gallery side: f(v)
    # ----------------------------------------------------------------------------------------------------------
    def get_vision_outputs(self, pixel_values: torch.Tensor):
        """The tower's raw outputs: patch / grid features `last_hidden_state` (`vision_families.vision_tower_outputs`)."""
        check_pixel_values(pixel_values, getattr(self.config.vision_config, "num_channels", 3))
        return vision_tower_outputs(self.vision_tower, pixel_values)

    def get_image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Gallery / target embeddings `f(v)`, by the rule of `vision_families.py` (`config.vision_pooling`).

        Args:
            pixel_values: (batch, channels, height, width) from the processor.

        Returns:
            (batch, dim) L2-normalised image embeddings.
        """
        return self._gallery_embeds(self.get_vision_outputs(pixel_values))

    def _gallery_embeds(self, vision_outputs) -> torch.Tensor:
        pooled = pool_vision_output(self.config.vision_pooling, vision_outputs)  # (batch, hidden)
        if self.vision_projection is not None:
            pooled = self.vision_projection(pooled)  # (batch, dim)
        return F.normalize(pooled, dim=-1)

    def get_reference_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """What the adapter `g` takes for each reference image: its gallery embedding f(v), (images, dim), or with
        `reference_tokens="patches"` its patch features, (images, tokens, features) (`reference_patch_features`)."""
        return self.encode_images(pixel_values, with_patches=self.config.reference_tokens == "patches")[-1]

    def encode_images(self, pixel_values: torch.Tensor, with_patches: bool = False) -> tuple:
        """Gallery embeddings f(v), (images, dim), and with `with_patches` the patch features the adapter takes,
        from one tower pass per distinct image of the batch.

        Triplet batches repeat images: a reference serves each of its edits, a pair each of its texts (MTCIR:
        ~5 per pair, groups of 6 images). Equal rows get the same outputs either way (the tower embeds each
        image on its own), so only the work changes; gradients reach the tower through the gather.

        Returns:
            `(embeds,)` or `(embeds, patch_features)`.
        """
        def encode(pixels):
            outputs = self.get_vision_outputs(pixels)
            embeds = self._gallery_embeds(outputs)  # (images, dim)
            return (embeds, reference_patch_features(self.config, outputs)) if with_patches else (embeds,)

        check_pixel_values(pixel_values, getattr(self.config.vision_config, "num_channels", 3))
        flat = pixel_values.reshape(len(pixel_values), -1)
        # Equal rows have equal projections, so distinct projections prove distinct rows without the row sort
        # (which costs ~1 s on a CPU for 1,024 images of 224 px): pair batches, with their augmented copies, stop here.
        fingerprint = flat @ torch.linspace(1.0, 2.0, flat.shape[1], dtype=flat.dtype, device=flat.device)
        if len(torch.unique(fingerprint)) == len(flat):
            return encode(pixel_values)
        distinct, inverse = torch.unique(flat, dim=0, return_inverse=True)
        if len(distinct) == len(pixel_values):
            return encode(pixel_values)
        return tuple(out[inverse] for out in encode(distinct.view(-1, *pixel_values.shape[1:])))

    def embed_distinct_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`get_image_embeds`, running the tower once per distinct image of the batch (`encode_images`)."""
        return self.encode_images(pixel_values)[0]

    # ----------------------------------------------------------------------------------------------------------
    # Query side: p(Φ([g(h); w]))
    # ----------------------------------------------------------------------------------------------------------
    def embed_query_tokens(self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None) -> torch.Tensor:
        """LLM input embeddings of a query batch, with `g(h)` spliced in at the image placeholders.

        Rows that contain `num_visual_tokens` placeholders (`config.image_token_id`) take one row of
        `image_embeds` (the adapter's input, `get_reference_embeds`) each, in order; rows without placeholders are
        text-only queries.

        Returns:
            (batch, seq, hidden) input embeddings.
        """
        image_mask = input_ids == self.config.image_token_id  # (batch, seq)
        tokens_per_row = image_mask.sum(-1)
        rows_with_image = int((tokens_per_row > 0).sum())
        n = self.config.num_visual_tokens
        if bool(((tokens_per_row != 0) & (tokens_per_row != n)).any()):
            raise ValueError(f"Each query must hold 0 or {n} image placeholder tokens; got {tokens_per_row.tolist()}.")
        n_images = 0 if image_embeds is None else image_embeds.shape[0]
        if n_images != rows_with_image:
            raise ValueError(
                f"{rows_with_image} queries have an image placeholder but {n_images} images were given "
                "(pixel_values / image_embeds must have one row per query with an image)."
            )
        embedding = self.get_input_embeddings()
        inputs_embeds = embedding(input_ids.masked_fill(image_mask, 0))  # (batch, seq, hidden)
        if rows_with_image:
            visual = self.adapter(image_embeds.to(self.adapter.layers[0].weight.dtype))  # (images, n, hidden)
            inputs_embeds = inputs_embeds.masked_scatter(image_mask.unsqueeze(-1), visual.to(inputs_embeds.dtype))
        return inputs_embeds

    def pool_hidden_states(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pool (batch, seq, hidden) -> (batch, hidden): the last attended token, or the masked mean."""
        if self.config.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
            return (hidden_states * mask).sum(1) / mask.sum(1).clamp(min=1)
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask.long() * positions).argmax(-1)  # index of the last real token, any padding side
        return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), last]

    def get_query_embeds(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Query embeddings `c = p(Φ([g(h); w]))`.

        Args:
            input_ids: (batch, seq) from the processor, image placeholders included.
            attention_mask: (batch, seq), 1 for real tokens; left or right padding give the same result.
            pixel_values: (images, 3, H, W) reference images, one per query with a placeholder; or
            image_embeds: precomputed `get_reference_embeds` instead of pixels: (images, dim) L2-normalised image
                embeddings, or (images, tokens, features) patch features for `reference_tokens="patches"`.

        Returns:
            (batch, projection_dim) L2-normalised query embeddings.
        """
        check_query_tokens(input_ids, attention_mask)
        if image_embeds is None and pixel_values is not None:
            image_embeds = self.get_reference_embeds(pixel_values)
        elif image_embeds is not None:
            check_reference_embeds(image_embeds, self.config)
        device = self.get_input_embeddings().weight.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        if image_embeds is not None:
            image_embeds = image_embeds.to(device)
        inputs_embeds = self.embed_query_tokens(input_ids, image_embeds)
        # Positions follow the attention mask, so left and right padding give the same embedding.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (batch, seq)
        hidden = self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state  # (batch, seq, hidden)
        pooled = self.pool_hidden_states(hidden, attention_mask)  # (batch, hidden)
        return F.normalize(self.projection(pooled.to(self.projection.weight.dtype)), dim=-1)

    def prepare_contrastive_inputs(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        target_pixel_values: torch.Tensor | None = None,
        target_image_embeds: torch.Tensor | None = None,
        target_image_ids: torch.Tensor | None = None,
        text_input_ids: torch.Tensor | None = None,
        text_attention_mask: torch.Tensor | None = None,
        caption_ids: torch.Tensor | None = None,
        modification_template_ids: torch.Tensor | None = None,
        query_frame_ids: torch.Tensor | None = None,
        query_keys: torch.Tensor | None = None,
        target_query_keys: torch.Tensor | None = None,
        modification_writer=None,
    ) -> CoLLMContrastiveInputs:
        """Everything before the LLM pass: image embeddings, and for pairs the on-the-fly triplet synthesis.

        Triplets: one query group, the given queries. Pairs (`caption_ids` given, see `CoLLMPairCollator`):
        `pixel_values` are the augmented targets t(v); their embeddings h' give the synthesised references h*
        (`synthesis.synthesize_composed_queries`), and three query groups are stacked: image-only from h*
        (`input_ids`), text-only from the target caption (`text_input_ids`), composed from h* and w* (CoLLM §3.2).
        `modification_writer` (see `forward`) rewrites the templated texts w* of the composed group.
        """
        patches = self.config.reference_tokens == "patches"
        reference_embeds = patch_features = None  # f(v) of the query images; their patch features ("patches")
        joint = (image_embeds is None and target_image_embeds is None and pixel_values is not None
                 and target_pixel_values is not None and pixel_values.shape[1:] == target_pixel_values.shape[1:])
        if joint:  # one tower pass for both sides: larger, fewer matrix products (a shared image is embedded once)
            encoded = self.encode_images(torch.cat([pixel_values, target_pixel_values]), with_patches=patches)
            reference_embeds, target_image_embeds = encoded[0][: len(pixel_values)], encoded[0][len(pixel_values):]
            patch_features = encoded[1][: len(pixel_values)] if patches else None
        elif image_embeds is None and pixel_values is not None:
            reference_embeds, *rest = self.encode_images(pixel_values, with_patches=patches)  # (images, dim)
            patch_features = rest[0] if patches else None
        elif image_embeds is not None:
            check_reference_embeds(image_embeds, self.config)
            reference_embeds, patch_features = (None, image_embeds) if patches else (image_embeds, None)
        image_embeds = patch_features if patches else reference_embeds  # the adapter's input
        if target_image_embeds is None and target_pixel_values is not None:
            target_image_embeds = self.embed_distinct_images(target_pixel_values)  # (batch, dim)
        elif target_image_embeds is not None:
            check_embeds(target_image_embeds, self.config.image_embedding_size, "target_image_embeds")
        num_groups = 1
        if caption_ids is not None:
            if image_embeds is None or text_input_ids is None or modification_template_ids is None or query_frame_ids is None:
                raise ValueError(
                    "Pair pre-training needs pixel_values (augmented targets) or image_embeds, text_input_ids, "
                    "caption_ids, modification_template_ids and query_frame_ids (use CoLLMPairCollator)."
                )
            if reference_embeds is None:
                raise ValueError("Pair pre-training with patch tokens needs pixel_values (the neighbours are chosen by "
                                 "the gallery embeddings).")
            synthesized = synthesize_composed_queries(
                reference_embeds, caption_ids, modification_template_ids, query_frame_ids, target_image_ids,
                alpha=self.config.slerp_alpha, patch_features=patch_features,
            )
            if modification_writer is not None:
                synthesized = modification_writer(synthesized, caption_ids, modification_template_ids, query_frame_ids)
            input_ids, attention_mask = concat_padded_queries(
                [(input_ids, attention_mask), (text_input_ids, text_attention_mask),
                 (synthesized.input_ids, synthesized.attention_mask)]
            )  # (3 * batch, seq): image-only, text-only, composed
            image_embeds = torch.cat([synthesized.reference_embeds, synthesized.reference_embeds])  # (2 * batch, ...)
            num_groups = 3
        negatives = None
        if self.config.contrastive_loss.reference_negatives and num_groups == 1 and image_embeds is not None:
            if reference_embeds is None:
                raise ValueError("Reference negatives need the references' gallery embeddings: pass pixel_values, "
                                 "not precomputed patch features.")
            negatives = distinct_rows(reference_embeds)  # (references, dim) f(v_ref)
        return CoLLMContrastiveInputs(input_ids, attention_mask, image_embeds, num_groups, target_image_embeds,
                                      target_image_ids, query_keys, target_query_keys, negatives)

    def embed_query_groups(self, inputs: CoLLMContrastiveInputs) -> torch.Tensor:
        """Query embeddings of the stacked groups of `inputs`, one LLM pass per group.

        The groups of a pair batch differ in length (image-only prompts are short, composed ones hold two
        captions), so each pass drops the padding columns its group does not use: the same embeddings (they do
        not depend on padding) for less LLM work.

        Returns:
            (groups * batch, projection_dim) L2-normalised, in the order of `inputs.input_ids`.
        """
        if inputs.num_groups == 1:
            return self.get_query_embeds(inputs.input_ids, inputs.attention_mask, image_embeds=inputs.image_embeds)
        embeds, used = [], 0
        for ids, mask in zip(inputs.input_ids.chunk(inputs.num_groups), inputs.attention_mask.chunk(inputs.num_groups)):
            columns = mask.bool().any(0)  # (seq,) columns with a real token in some row of this group
            ids, mask = ids[:, columns], mask[:, columns]
            with_image = int(((ids == self.config.image_token_id) & mask.bool()).any(1).sum())
            images = inputs.image_embeds[used:used + with_image] if with_image else None
            used += with_image
            embeds.append(self.get_query_embeds(ids, mask, image_embeds=images))
        return torch.cat(embeds)

    def contrastive_output(
        self, query_embeds: torch.Tensor, inputs: CoLLMContrastiveInputs, return_loss: bool = True
    ) -> CoLLMOutput:
        """Loss (mean over query groups of `losses.contrastive_loss` with the options `config.contrastive_loss`)."""
        groups = query_embeds.chunk(inputs.num_groups)  # each (batch, dim); the last is the composed query
        target_embeds, logits, loss = inputs.target_embeds, None, None
        if target_embeds is not None:
            target_embeds = target_embeds.to(query_embeds.device)  # the loss and the logits run in fp32
            logits = similarity_logits(groups[-1], target_embeds, self.logit_scale)  # (batch, batch)
            if return_loss:
                config = self.config.contrastive_loss
                extra = None if inputs.negative_embeds is None else inputs.negative_embeds.to(query_embeds.device)
                keys = (inputs.query_keys, inputs.target_query_keys) if inputs.num_groups == 1 else (None, None)
                losses = [contrastive_loss(q, target_embeds, self.logit_scale, inputs.target_image_ids, config, extra, *keys)
                          for q in groups]
                loss = torch.stack(losses).mean()
        elif return_loss:
            raise ValueError("return_loss=True needs target_pixel_values or target_image_embeds.")
        return CoLLMOutput(loss=loss, query_embeds=groups[-1], target_embeds=target_embeds, logits_per_query=logits)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        target_pixel_values: torch.Tensor | None = None,
        target_image_embeds: torch.Tensor | None = None,
        target_image_ids: torch.Tensor | None = None,
        text_input_ids: torch.Tensor | None = None,
        text_attention_mask: torch.Tensor | None = None,
        caption_ids: torch.Tensor | None = None,
        modification_template_ids: torch.Tensor | None = None,
        query_frame_ids: torch.Tensor | None = None,
        query_keys: torch.Tensor | None = None,
        target_query_keys: torch.Tensor | None = None,
        return_loss: bool = False,
        modification_writer=None,
        **kwargs,
    ) -> CoLLMOutput:
        """Embed queries (and targets), and with `return_loss=True` the contrastive loss over the batch.

        Args:
            input_ids, attention_mask, pixel_values, image_embeds: the query, as in `get_query_embeds`.
            target_pixel_values: (batch, 3, H, W) target images; or
            target_image_embeds: (batch, dim) precomputed target embeddings.
            target_image_ids: (batch,) integer target image ids (`synthesis.hash_ids`): rows sharing one are not
                each other's negatives, nor (pairs) each other's synthesis neighbours.
            text_input_ids, text_attention_mask, caption_ids, modification_template_ids, query_frame_ids: pair
                pre-training with on-the-fly triplet synthesis (`CoLLMPairCollator`); see
                `prepare_contrastive_inputs`.
            query_keys, target_query_keys: triplets, (batch,) and (batch, keys) integer keys (`CoLLMTripletCollator`):
                a target whose keys hold query i's key answers query i too and is not its negative.
            return_loss: compute the contrastive loss (needs targets); under torch.distributed its negatives
                come from every process.
            modification_writer: pairs only; None keeps the paper's template texts w*. Otherwise a callable
                `(synthesized, caption_ids, modification_template_ids, query_frame_ids) -> SynthesizedQueries` that
                rewrites them, e.g. `collm_hf.training.llm_synthesis.ComposedQueryWriter` (an LLM writes each text);
                a training component, never part of the model or its checkpoint (`CoLLMTrainer` passes it).

        Returns:
            [`CoLLMOutput`]; for pairs `query_embeds` and `logits_per_query` are the composed queries'.
        """
        inputs = self.prepare_contrastive_inputs(
            input_ids, attention_mask, pixel_values, image_embeds, target_pixel_values, target_image_embeds,
            target_image_ids, text_input_ids, text_attention_mask, caption_ids, modification_template_ids, query_frame_ids,
            query_keys, target_query_keys, modification_writer,
        )
        return self.contrastive_output(self.embed_query_groups(inputs), inputs, return_loss)

    # ----------------------------------------------------------------------------------------------------------
    # Composition from two pretrained checkpoints
    # ----------------------------------------------------------------------------------------------------------
    @classmethod
    def from_backbones(
        cls,
        vision_name_or_path: str,
        llm_name_or_path: str,
        *,
        dtype: torch.dtype | None = None,
        vision_kwargs: dict | None = None,
        llm_kwargs: dict | None = None,
        **options,
    ) -> "CoLLMModel":
        """Compose a CoLLM from a pretrained vision checkpoint and a pretrained LLM checkpoint.

        CLIP / SigLIP / BLIP keep their projection (gallery = e.g. `CLIPModel.get_image_features`); other towers give
        a pooled feature (`vision_pooling`, `vision_families.py`). A `*ForCausalLM` / `*ForImageClassification`
        checkpoint loads into its base model. Only the adapter, projection and logit scale are new.

        Args:
            vision_name_or_path: a CLIP/SigLIP/BLIP checkpoint, or any transformers vision checkpoint (DINOv2, ViT, ...).
            llm_name_or_path: a decoder LLM (or text encoder) checkpoint.
            dtype: dtype for both towers and the new modules.
            vision_kwargs / llm_kwargs: extra `from_pretrained` keyword arguments per tower. Both towers are read
                from safetensors only; pass `{"use_safetensors": None}` to allow pickle checkpoints you trust.
            **options: `CoLLMConfig` options (adapter_type, pooling, num_visual_tokens, vision_pooling, ...).

        Example:
            `CoLLMModel.from_backbones("openai/clip-vit-large-patch14", "Salesforce/SFR-Embedding-2_R")`
        """
        from .composition import compose_from_backbones

        return compose_from_backbones(cls, vision_name_or_path, llm_name_or_path, dtype, vision_kwargs, llm_kwargs, options)


__all__ = ["CoLLMModel", "CoLLMOutput", "CoLLMPreTrainedModel", "CoLLMImageAdapter", "CoLLMPatchAdapter",
           "CoLLMContrastiveInputs"]
