"""RAM: main memory, the access module of the Differentiable Neural Computer.

Dense mode (this file): content addressing, usage with free gates and sort-based
allocation, the temporal link matrix with precedence, and forward/backward reads mixed by
read modes, with several read and write heads. Cost per step: time
O(B (R + 1) H N^2 + B (R + H) N W + B H N log N) (the link update and the forward/backward
reads, content addressing and the write, one sort per write head); memory O(B H N^2) for
the links. Off the tier's ticks the write path is still computed, with zero weights.

Named dimensions: B batch, N slots, W width, R read heads, H write heads.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from tiered.knn import make_index, resolve_backend, set_faiss_threads
from tiered.tier import Tier, TierOutput, TierStats, write_ticks
from tiered.tiers import addressing, linkage
from tiered.tiers.ram_sparse import (
    SparseRAMState,
    SparseTape,
    sparse_interface_size,
    sparse_step,
)
from tiered.tiers.sparse_links import LinkTables
from tiered.validation import check_choice, check_non_negative_int, check_positive_int

# sparse="auto" switches to sparse mode above this many slots.
SPARSE_AUTO_SLOTS = 1024


class RAMState(NamedTuple):
    """Per-sequence state of the dense RAM.

    Attributes:
        memory: (B, N, W) the memory matrix M.
        read_weights: (B, R, N) the last read weights w^r.
        write_weights: (B, H, N) this step's write weights w^w (zero off the tier's ticks).
        precedence: (B, H, N) precedence p of each write head.
        link: (B, H, N, N) temporal link matrix L of each write head.
        usage: (B, N) usage u in [0, 1].
        clock: (B,) steps taken, an integer tensor.
    """

    memory: Tensor
    read_weights: Tensor
    write_weights: Tensor
    precedence: Tensor
    link: Tensor
    usage: Tensor
    clock: Tensor


class RAMInterface(NamedTuple):
    """The controller's interface vector split and squashed for the RAM.

    Attributes:
        read_keys: (B, R, W).
        read_strengths: (B, R), >= 1.
        free_gates: (B, R) in [0, 1].
        read_modes: (B, R, 1 + 2H), a softmax: H backward, 1 content, H forward modes.
        write_keys: (B, H, W).
        write_strengths: (B, H), >= 1.
        erase: (B, H, W) in [0, 1].
        write_vectors: (B, H, W).
        allocation_gates: (B, H) in [0, 1].
        write_gates: (B, H) in [0, 1].
    """

    read_keys: Tensor
    read_strengths: Tensor
    free_gates: Tensor
    read_modes: Tensor
    write_keys: Tensor
    write_strengths: Tensor
    erase: Tensor
    write_vectors: Tensor
    allocation_gates: Tensor
    write_gates: Tensor


def ram_interface_size(width: int, read_heads: int, write_heads: int) -> int:
    """R (W + 3 + 2H) + H (3W + 3) features: see ``parse_ram_interface``."""
    return read_heads * (width + 3 + 2 * write_heads) + write_heads * (3 * width + 3)


def parse_ram_interface(
    interface: Tensor, width: int, read_heads: int, write_heads: int
) -> RAMInterface:
    """Split (B, ram_interface_size) into the named, squashed parts of ``RAMInterface``.

    Layout: R read keys (W each), R read strengths, R free gates, R x (1 + 2H) read modes,
    H write keys (W each), H write strengths, H erase vectors (W each), H write vectors
    (W each), H allocation gates, H write gates.
    """
    B, W, R, H = interface.shape[0], width, read_heads, write_heads
    sizes = [R * W, R, R, R * (1 + 2 * H), H * W, H, H * W, H * W, H, H]
    parts = torch.split(interface, sizes, dim=-1)
    return RAMInterface(
        read_keys=parts[0].reshape(B, R, W),
        read_strengths=addressing.oneplus(parts[1]),
        free_gates=torch.sigmoid(parts[2]),
        read_modes=torch.softmax(parts[3].reshape(B, R, 1 + 2 * H), dim=-1),
        write_keys=parts[4].reshape(B, H, W),
        write_strengths=addressing.oneplus(parts[5]),
        erase=torch.sigmoid(parts[6].reshape(B, H, W)),
        write_vectors=parts[7].reshape(B, H, W),
        allocation_gates=torch.sigmoid(parts[8]),
        write_gates=torch.sigmoid(parts[9]),
    )


def mix_read_weights(
    read_modes: Tensor, content: Tensor, forward: Tensor, backward: Tensor
) -> Tensor:
    """w^r = sum_h pi^b_h b_h + pi^c c + sum_h pi^f_h f_h.

    Args:
        read_modes: (B, R, 1 + 2H): backward modes, content mode, forward modes.
        content: (B, R, N).
        forward: (B, R, H, N).
        backward: (B, R, H, N).

    Returns:
        (B, R, N).
    """
    H = forward.shape[2]
    backward_mode = read_modes[..., :H].unsqueeze(-1)  # (B, R, H, 1)
    content_mode = read_modes[..., H : H + 1]  # (B, R, 1)
    forward_mode = read_modes[..., H + 1 :].unsqueeze(-1)  # (B, R, H, 1)
    return (
        content_mode * content
        + (forward_mode * forward).sum(dim=2)
        + (backward_mode * backward).sum(dim=2)
    )


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
            sparse DNC); 0 turns the links off (SAM).
        sparse: True, False, or "auto" (sparse above SPARSE_AUTO_SLOTS = 1024 slots).
        index: kNN backend in sparse mode: "exact", "faiss" or "auto" (exact on GPUs and
            below 32768 slots, FAISS otherwise when installed).
        nprobe: inverted lists FAISS visits per query.
        faiss_threads: OpenMP threads FAISS may use. Each search handles only R queries per
            batch element, so 1 (the default) is as fast and never spin-waits against
            torch's threads on shared cores.
        rewrite_penalty: lambda, the weight of the erased content in the loss.
        period: the RAM writes only on every ``period``-th step; reads are served, and free
            gates release slots, every step.
        name: the tier's name in logs; defaults to ``"ram"``.
    """

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
        nprobe: int = 8,
        faiss_threads: int = 1,
        rewrite_penalty: float = 0.0,
        period: int = 1,
        name: str | None = None,
    ) -> None:
        super().__init__(rewrite_penalty=rewrite_penalty, period=period, name=name)
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
        self.faiss_threads = check_positive_int("RAM", "faiss_threads", faiss_threads)
        if self.sparse and self.write_heads != 1:
            raise ValueError(
                f"RAM: sparse mode has one write head, got write_heads={write_heads}; "
                f"use write_heads=1 or sparse=False"
            )

    @property
    def interface_size(self) -> int:
        if self.sparse:
            return sparse_interface_size(self.width, self.read_heads, self.links > 0)
        return ram_interface_size(self.width, self.read_heads, self.write_heads)

    @property
    def query_slices(self) -> list[slice]:
        """Each read head's key: the first R x W interface features (both modes)."""
        return [slice(h * self.width, (h + 1) * self.width) for h in range(self.read_heads)]

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
        return RAMState(
            memory=zeros(B, N, W),
            read_weights=zeros(B, R, N),
            write_weights=zeros(B, H, N),
            precedence=zeros(B, H, N),
            link=zeros(B, H, N, N),
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
        index = make_index(backend, B, self.slots, self.width, self.nprobe)
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
        return SparseRAMState(
            memory=memory,
            read_weights=torch.zeros(B, R, K, device=device, dtype=memory.dtype),
            read_indices=torch.full((B, R, K), -1, device=device, dtype=torch.long),
            precedence_rows=torch.zeros(B, self.links, device=device, dtype=torch.long),
            precedence=torch.zeros(B, self.links, device=device, dtype=memory.dtype),
            last_access=last_access,
            links=tables,
            token=torch.zeros((), device=device, dtype=memory.dtype),
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
        written = (
            state.tape.written.clone()
            if isinstance(state.tape, SparseTape)
            else (state.last_access >= 0)
        )
        links = None if state.links is None else state.links.clone()
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

    def forward(self, interface: Tensor, state: RAMState | SparseRAMState) -> TierOutput:
        """One step: write (on ticks), then read.

        Args:
            interface: (B, interface_size).
            state: the previous ``RAMState``.

        Returns:
            ``TierOutput`` with the read words (B, R * W), the next ``RAMState`` and stats.
        """
        self.check_interface(interface, state.clock)
        tick = write_ticks(state.clock, self.period)  # (B,)
        if self.sparse:
            return self._sparse_forward(interface, state, tick)  # type: ignore[arg-type]
        p = parse_ram_interface(interface, self.width, self.read_heads, self.write_heads)

        # Write: usage from the last write and this step's free gates, then allocation.
        usage = addressing.update_usage(
            state.usage, state.write_weights, state.read_weights, p.free_gates
        )
        allocation = addressing.write_allocation_weights(usage, p.allocation_gates * p.write_gates)
        write_content = addressing.content_weights(state.memory, p.write_keys, p.write_strengths)
        write_weights = addressing.write_weights(
            allocation, write_content, p.allocation_gates, p.write_gates
        )  # (B, H, N)
        # Off ticks the write weights are zero, so memory, links and precedence are carried
        # exactly (x * 1 + 0); usage still follows the free gates every step.
        write_weights = write_weights * tick.to(write_weights.dtype)[:, None, None]
        memory, erased = addressing.erase_and_write(
            state.memory, write_weights, p.erase, p.write_vectors
        )
        link = linkage.update_link(state.link, state.precedence, write_weights)
        precedence = linkage.update_precedence(state.precedence, write_weights)
        # Read: content on the new memory, forward/backward along the links.
        read_content = addressing.content_weights(memory, p.read_keys, p.read_strengths)
        forward = linkage.directional_read_weights(link, state.read_weights, forward=True)
        backward = linkage.directional_read_weights(link, state.read_weights, forward=False)
        read_weights = mix_read_weights(p.read_modes, read_content, forward, backward)
        words = addressing.read_words(memory, read_weights)  # (B, R, W)

        B = interface.shape[0]
        next_state = RAMState(
            memory=memory,
            read_weights=read_weights,
            write_weights=write_weights,
            precedence=precedence,
            link=link,
            usage=usage,
            clock=state.clock + 1,
        )
        stats = TierStats(
            rewrite=erased,
            reads=interface.new_full((B,), float(self.read_heads)).detach(),
            writes=(tick.to(interface.dtype) * self.write_heads).detach(),
            slots_in_use=usage.sum(dim=-1).detach(),
        )
        return TierOutput(words.reshape(B, -1), next_state, stats)

    def _sparse_forward(self, interface: Tensor, state: SparseRAMState, tick: Tensor) -> TierOutput:
        words, next_state, erased, in_use = sparse_step(
            interface, state, width=self.width, read_heads=self.read_heads, k=self.k, tick=tick
        )
        B = interface.shape[0]
        stats = TierStats(
            rewrite=erased,
            reads=interface.new_full((B,), float(self.read_heads)).detach(),
            writes=tick.to(interface.dtype).detach(),
            slots_in_use=in_use.detach(),
        )
        return TierOutput(words, next_state, stats)

    def extra_repr(self) -> str:
        mode = (
            f"sparse=True, k={self.k}, links={self.links}, index={self.index!r}"
            if self.sparse
            else "sparse=False"
        )
        return (
            f"slots={self.slots}, width={self.width}, read_heads={self.read_heads}, "
            f"write_heads={self.write_heads}, {mode}, " + super().extra_repr()
        )
