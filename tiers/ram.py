"""RAM: main memory, the access module of the Differentiable Neural Computer.

One tier with two modes: dense (``tiered.tiers.ram_dense``: the full DNC) and sparse
(``tiered.tiers.ram_sparse``: SAM and the sparse DNC). This file holds the module: its
arguments, states, and the dispatch of each step to the mode's pure step function.

Named dimensions: B batch, N slots, W width, R read heads, H write heads.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from tiered.hierarchy import check_tier_name, hierarchy_repr
from tiered.knn import (
    DEFAULT_NPROBE,
    EXHAUSTIVE_ROWS,
    make_index,
    resolve_backend,
    set_faiss_threads,
)
from tiered.tier import Spill, Tier, TierOutput, Traffic, head_slices, tier_stats, write_ticks
from tiered.tiers.ram_dense import (
    DenseOptions,
    RAMState,
    dense_step,
    ram_interface_size,
    ram_write_features,
)
from tiered.tiers.ram_sparse import (
    SparseRAMState,
    SparseTape,
    sparse_interface_size,
    sparse_step,
)
from tiered.tiers.sparse_links import LinkTables
from tiered.validation import (
    check_bool,
    check_choice,
    check_non_negative_int,
    check_positive_int,
)

# sparse="auto" switches to sparse mode above this many slots.
SPARSE_AUTO_SLOTS = 1024


class RAM(Tier):
    """Main memory: the DNC's memory access module, dense or sparse.

    Dense mode is the full DNC (content, allocation, temporal links). Sparse mode is
    Sparse Access Memory (see ``tiered.tiers.ram_sparse``): each read head attends over
    its ``k`` nearest rows found by a kNN index, writes touch the rows just read plus the
    least recently used row, and backward rolls the in-place memory back step by step.
    With ``links > 0`` it is the sparse DNC: each slot keeps its ``links`` strongest
    temporal links each way, and heads mix content, forward and backward reads. Sparse
    mode has one write head.

    Args:
        slots: number of memory slots, N in the DNC paper.
        width: width of each slot (word size), W in the DNC paper.
        read_heads: number of read heads, R in the DNC paper.
        write_heads: number of write heads, each with its own link matrix (dense mode;
            sparse mode takes 1).
        k: rows each read head retrieves in sparse mode (K in the SAM paper).
        links: sparse mode's temporal links kept per slot in each direction (K_L in the
            sparse DNC); 0 turns the links off (SAM). Dense mode: 0 turns the temporal links
            and read modes off (a content-only memory, Franke et al. 2018: no N x N state);
            any other value keeps the full link matrices.
        sparse: True, False, or "auto" (sparse above SPARSE_AUTO_SLOTS = 1024 slots).
        index: kNN backend in sparse mode: "exact", "faiss" or "auto" (exact on GPUs and
            below 65536 slots, FAISS otherwise when installed; docs/ram.md has the
            measurements behind it).
        nprobe: inverted lists FAISS visits per query (of about sqrt(N)); more find more of
            the true nearest rows, at a search cost that grows with it. The default, 64,
            found a stored row from a noisy copy at least 99% of the time up to 2^20 slots.
        exhaustive_rows: while a FAISS index holds at most this many rows (the rows
            written), it is searched exactly among them, in torch; beyond that, through its
            inverted lists, trained on the memory's own rows. Lower it to use (and train
            with) the approximate search on short sequences.
        faiss_threads: OpenMP threads FAISS may use. Each search handles only R queries per
            batch element, so 1 (the default) is as fast and never spin-waits against
            torch's threads on shared cores.
        search_threads: FAISS: how many batch elements' indexes are searched at once, by
            that many Python threads, each search on ``faiss_threads`` OpenMP threads; 0 (the
            default): as many as torch's intra-op threads (``torch.get_num_threads()``).
        recall_every: sparse mode: every this many steps, check the rows the kNN index
            returned for the content queries against exact search over every written row
            (O(B R N W) on that step); the training module logs the share found as
            ``<stage>/recall/<name>``, so a lossy index shows. 0 (the default) never checks.
        rewrite_penalty: lambda, the weight of the erased content in the loss.
        period: the RAM writes only on every ``period``-th step; reads are served, and free
            gates release slots, every step.
        name: the tier's name in logs; defaults to ``"ram"``.
        spill_to: write-back: the name of a lower tier (another RAM or a Disk of the same
            controller) that receives what each write overwrites (in dense mode, weighted
            by the slots' usage after the free gates: freed content is not written back).
        spill_projection: when the target's width differs, map spilled rows through a
            trainable linear projection (owned by the controller); without it a width
            mismatch is an error.
        clock_rule: with ``period > 1``: "last", "mean" or "gate" (``tiered.tier.Tier``).
        content_mask: dense mode: each read and write head emits a mask over the W features
            and content addressing compares only the masked features (Csordás & Schmidhuber
            2019); adds (R + H) W interface features.
        deallocate: dense mode: slots the free gates release lose their content, not only
            their usage (Csordás & Schmidhuber 2019); the content they lose counts in the
            rewrite penalty's erased content.
        link_sharpness: dense mode with links: each read head sharpens its forward and
            backward link weights by a learned exponent s >= 1, d^s / sum d^s (Csordás &
            Schmidhuber 2019); adds 2R interface features.
        interface_norm: layer normalisation of this RAM's interface features before they are
            split and squashed (Franke et al. 2018), with a learned scale and shift.

    A RAM also takes spills from tiers that name it in ``spill_to``: each spilled row is
    written, the step it arrives and whatever the period, into the least used slot
    (``dense_step`` and ``sparse_step`` document the rule).
    """

    accepts_spills = True
    fills_caches = True

    def __init__(
        self,
        slots: int,
        width: int,
        read_heads: int = 4,
        write_heads: int = 1,
        k: int = 8,
        links: int = 8,
        sparse: bool | str = "auto",
        index: str = "auto",
        nprobe: int = DEFAULT_NPROBE,
        exhaustive_rows: int = EXHAUSTIVE_ROWS,
        faiss_threads: int = 1,
        search_threads: int = 0,
        recall_every: int = 0,
        rewrite_penalty: float = 0.0,
        period: int = 1,
        name: str | None = None,
        spill_to: str | None = None,
        spill_projection: bool = False,
        clock_rule: str = "last",
        content_mask: bool = False,
        deallocate: bool = False,
        link_sharpness: bool = False,
        interface_norm: bool = False,
    ) -> None:
        super().__init__(
            rewrite_penalty=rewrite_penalty, period=period, name=name, clock_rule=clock_rule
        )
        self.spill_to = check_tier_name("RAM", "spill_to", spill_to)
        self.spill_projection = check_bool("RAM", "spill_projection", spill_projection)
        self.slots = check_positive_int("RAM", "slots", slots)
        self.width = check_positive_int("RAM", "width", width)
        self.read_heads = check_positive_int("RAM", "read_heads", read_heads)
        self.write_heads = check_positive_int("RAM", "write_heads", write_heads)
        self.k = check_positive_int("RAM", "k", k)
        self.links = check_non_negative_int("RAM", "links", links)
        if not isinstance(sparse, bool):
            check_choice("RAM", "sparse", sparse, ("auto",))
            sparse = self.slots > SPARSE_AUTO_SLOTS
        self.sparse = sparse
        self.index = check_choice("RAM", "index", index, ("auto", "exact", "faiss"))
        self.nprobe = check_positive_int("RAM", "nprobe", nprobe)
        self.exhaustive_rows = check_non_negative_int("RAM", "exhaustive_rows", exhaustive_rows)
        self.faiss_threads = check_positive_int("RAM", "faiss_threads", faiss_threads)
        self.search_threads = check_non_negative_int("RAM", "search_threads", search_threads)
        self.recall_every = check_non_negative_int("RAM", "recall_every", recall_every)
        self.samples_recall = self.sparse and self.recall_every > 0
        if self.sparse and self.write_heads != 1:
            raise ValueError(
                f"RAM: sparse mode has one write head, got write_heads={write_heads}; "
                f"use write_heads=1 or sparse=False"
            )
        fixes = {
            "content_mask": check_bool("RAM", "content_mask", content_mask),
            "deallocate": check_bool("RAM", "deallocate", deallocate),
            "link_sharpness": check_bool("RAM", "link_sharpness", link_sharpness),
        }
        if self.sparse and any(fixes.values()):
            on = ", ".join(f"{name}=True" for name, value in fixes.items() if value)
            raise ValueError(
                f"RAM: {on} is a dense-mode option, but this RAM is sparse "
                f"(slots={self.slots}, sparse={sparse!r}); use sparse=False or drop it"
            )
        if fixes["link_sharpness"] and self.links == 0:
            raise ValueError(
                "RAM: link_sharpness=True sharpens the temporal links, but links=0 turns them "
                "off; use links > 0 or link_sharpness=False"
            )
        self.options = DenseOptions(
            links=self.links > 0,
            content_mask=fixes["content_mask"],
            deallocate=fixes["deallocate"],
            sharpness=fixes["link_sharpness"],
        )
        self.interface_norm = check_bool("RAM", "interface_norm", interface_norm)
        self.norm = nn.LayerNorm(self.interface_size) if self.interface_norm else None

    @property
    def interface_size(self) -> int:
        if self.sparse:
            return sparse_interface_size(self.width, self.read_heads, self.links > 0)
        return ram_interface_size(self.width, self.read_heads, self.write_heads, self.options)

    @property
    def query_slices(self) -> list[slice]:
        """Each read head's key: the first R x W interface features (both modes)."""
        return head_slices(self.read_heads, self.width)

    @property
    def read_size(self) -> int:
        return self.read_heads * self.width

    def initial_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> RAMState | SparseRAMState:
        B = check_positive_int("RAM", "batch_size", batch_size)
        if self.sparse:
            return self._sparse_initial_state(B, device, dtype)
        N, W, R, H = self.slots, self.width, self.read_heads, self.write_heads
        zeros = lambda *shape: torch.zeros(*shape, device=device, dtype=dtype)  # noqa: E731
        L = N if self.options.links else 0  # no link state in a content-only memory
        return RAMState(
            memory=zeros(B, N, W),
            read_weights=zeros(B, R, N),
            write_weights=zeros(B, H, N),
            precedence=zeros(B, H, L),
            link=zeros(B, H, L, L),
            usage=zeros(B, N),
            clock=torch.zeros(B, device=device, dtype=torch.long),
        )

    def _sparse_initial_state(
        self, B: int, device: torch.device | str | None, dtype: torch.dtype
    ) -> SparseRAMState:
        memory = torch.zeros(B, self.slots, self.width, device=device, dtype=dtype)
        written = torch.zeros(B, self.slots, device=device, dtype=torch.bool)
        last_access = torch.full((B, self.slots), -1, device=device, dtype=torch.long)
        return self._sparse_state(memory, written, last_access)

    def _sparse_state(
        self,
        memory: Tensor,
        written: Tensor,
        last_access: Tensor,
        links: LinkTables | None = None,
    ) -> SparseRAMState:
        """A state over these buffers (links: fresh empty tables when None), with its caches
        (kNN index, usage heap) built from them."""
        B, device = memory.shape[0], memory.device
        backend = resolve_backend(self.index, self.slots, device)
        if backend == "faiss":
            set_faiss_threads(self.faiss_threads)
        threads = self.search_threads or torch.get_num_threads()
        index = make_index(backend, B, self.slots, self.width, self.nprobe, self.exhaustive_rows,
                           threads)  # fmt: skip
        index.rebuild(memory, written)
        tables = (
            (
                links
                if links is not None
                else LinkTables.empty(B, self.slots, self.links, memory.dtype, device)
            )
            if self.links
            else None
        )
        tape = SparseTape(memory, written, last_access, index, tables)
        R, K = self.read_heads, self.k
        token = torch.zeros((), device=device, dtype=memory.dtype)
        tape.advance(token)
        return SparseRAMState(
            memory=memory,
            read_weights=torch.zeros(B, R, K, device=device, dtype=memory.dtype),
            read_indices=torch.full((B, R, K), -1, device=device, dtype=torch.long),
            precedence_rows=torch.zeros(B, self.links, device=device, dtype=torch.long),
            precedence=torch.zeros(B, self.links, device=device, dtype=memory.dtype),
            last_access=last_access,
            links=tables,
            token=token,
            clock=torch.zeros(B, device=device, dtype=torch.long),
            tape=tape,
        )

    def rebuild_state(self, state: SparseRAMState) -> SparseRAMState:
        """A sparse state over a copy of ``state``'s buffers with its caches (kNN index,
        usage heap) rebuilt from them: after loading, after a device move, or to branch a
        sequence. Read weights and the clock carry over."""
        if state.precedence.shape[-1] != self.links:
            raise ValueError(
                f"RAM '{self.name}': the state was made with links="
                f"{state.precedence.shape[-1]}, this RAM has links={self.links}"
            )
        memory = state.memory.detach().clone()
        device = memory.device  # the tape's buffers may lie on the device the state left
        written = (
            state.tape.written.to(device, copy=True)
            if isinstance(state.tape, SparseTape)
            else (state.last_access >= 0).to(device)
        )
        links = None
        if state.links is not None:
            links = LinkTables(*(table.to(device) for table in state.links.clone()))
        fresh = self._sparse_state(
            memory, written, state.last_access.to(memory.device).clone(), links
        )
        return fresh._replace(
            read_weights=state.read_weights.detach().clone(),
            read_indices=state.read_indices.clone(),
            precedence_rows=state.precedence_rows.clone(),
            precedence=state.precedence.clone(),
            clock=state.clock.clone(),
        )

    @property
    def write_slices(self) -> list[slice]:
        """The features only writes use. Dense: the write keys, strengths, erase and write
        vectors and the gates (after the read keys, strengths, free gates and read modes).
        Sparse: erase, add, the write gate and the interpolation gate."""
        R, W, H = self.read_heads, self.width, self.write_heads
        if self.sparse:
            start = R * (W + 1)
            return [slice(start, start + 2 * W + 2)]
        size = self.interface_size
        return [slice(size - ram_write_features(W, R, H, self.options), size)]

    def forward(
        self,
        interface: Tensor,
        state: RAMState | SparseRAMState,
        incoming: tuple[Spill, ...] = (),
        with_traffic: bool = False,
    ) -> TierOutput | tuple[TierOutput, Traffic]:
        """One step: write (on ticks), then read (``step``, through ``nn.Module``'s call).

        Args:
            interface: (B, interface_size).
            state: the previous ``RAMState``.
            incoming: spills to write this step (see ``step``).
            with_traffic: also return the ``Traffic`` (the controller's call).

        Returns:
            ``TierOutput`` with the read words (B, R * W), the next ``RAMState`` and stats
            (and the ``Traffic`` with ``with_traffic``).
        """
        out = self.step(interface, state, incoming)
        return out if with_traffic else out[0]

    def step(
        self,
        interface: Tensor,
        state: RAMState | SparseRAMState,
        incoming: tuple[Spill, ...] = (),
    ) -> tuple[TierOutput, Traffic]:
        """One step with the hierarchy's traffic: write (on ticks), write the ``incoming``
        spills, then read; returns the ``TierOutput`` and the ``Traffic`` (this step's
        spill with ``spill_to``, each read head's largest weight)."""
        self.check_interface(interface, state.clock)
        if self.norm is not None:
            interface = self.norm(interface)
        tick = write_ticks(state.clock, self.period)  # (B,)
        spill = self.spill_to is not None
        if self.sparse:
            state.tape.check_newest(state.token, f"RAM '{self.name}'")  # type: ignore[union-attr]
            check = self.samples_recall and int(state.clock[0]) % self.recall_every == 0
            words, next_state, erased, mass, in_use, recall, spilled = sparse_step(
                interface, state, width=self.width, read_heads=self.read_heads, k=self.k,
                tick=tick, check_recall=check, incoming=incoming, spill=spill,
            )  # type: ignore[arg-type]  # fmt: skip
        else:
            words, next_state, erased, mass, in_use, spilled = dense_step(
                interface, state, width=self.width, read_heads=self.read_heads,
                write_heads=self.write_heads, tick=tick, incoming=incoming, spill=spill,
                options=self.options,
            )  # type: ignore[arg-type]  # fmt: skip
            recall = None
        # read weights: (B, R, N) dense, (B, R, K) sparse, so O(R K) per step there
        checked, hits = recall if recall is not None else (None, None)
        stats = tier_stats(
            erased, write_mass=mass, read_weights=next_state.read_weights, slots_used=in_use,
            recall_checked=checked, recall_hits=hits,
            spilled=None if spilled is None else spilled.gate.sum(dim=1),
        )  # fmt: skip
        peak = next_state.read_weights.max(dim=-1).values  # (B, R)
        return TierOutput(words, next_state, stats), Traffic(spill=spilled, peak=peak)

    def extra_repr(self) -> str:
        fixes = [
            name
            for name, on in (
                ("content_mask", self.options.content_mask),
                ("deallocate", self.options.deallocate),
                ("link_sharpness", self.options.sharpness),
                ("interface_norm", self.interface_norm),
            )
            if on
        ]
        mode = (
            f"sparse=True, k={self.k}, links={self.links}, index={self.index!r}"
            if self.sparse
            else "sparse=False" + ("" if self.options.links else ", links=0")
        )
        mode += "".join(f", {name}=True" for name in fixes)
        return (
            f"slots={self.slots}, width={self.width}, read_heads={self.read_heads}, "
            f"write_heads={self.write_heads}, {mode}, "
            + super().extra_repr()
            + hierarchy_repr(self)
        )
