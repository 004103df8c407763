"""The block manager: the KV cache as a pool of fixed-size blocks, lent to sequences and shared by prefix.

PagedAttention (Kwon et al. 2023, arXiv:2309.06180) stores a sequence's keys and values in blocks of
`block_size` positions that need not be adjacent in memory, the way an OS maps virtual pages to
physical frames. A sequence owns a *block table*, the list of block ids holding its positions
0..bs-1, bs..2bs-1, ... So memory is taken as a sequence grows, one block at a time, and given back
the moment it finishes: no sequence reserves room for a context it may never reach, and at most
block_size - 1 slots per sequence are wasted.

Prefix caching (vLLM's automatic prefix caching; SGLang's RadixAttention, Zheng et al. 2023,
arXiv:2312.07104): a *full* block is named by a hash of its tokens chained with the hash of the
block before it (and the adapter, whose weights change the keys), so equal hashes mean equal
prefixes. A new sequence whose first blocks' hashes are known reuses those blocks, counting
references, and skips their prefill. A block whose last user finished keeps its contents and its
hash and goes to the end of the free list; it is reused by hash until its id is handed out for new
contents, oldest first (LRU eviction).

    manager = BlockManager(num_blocks=64, block_size=16)
    blocks, cached = manager.lookup_prefix(tokens)     # shared blocks, and how many tokens they hold
    block = manager.allocate()                         # one fresh block (evicting a cached one if need be)
    manager.register(block, parent_hash, block_tokens) # a block just became full: make it findable
    manager.release(blocks)                            # a sequence is done with these
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class NoFreeBlocks(RuntimeError):
    """Raised by allocate() when every block is in use; the scheduler answers by preempting."""


def block_hash(parent: int | None, tokens: Sequence[int], extra: object = None) -> int:
    """The name of a full block: its tokens, everything before it (parent's hash), and `extra`
    (the adapter). Python's tuple hash is 64-bit; a collision would serve wrong keys, so a server
    facing adversarial inputs would use a cryptographic hash (vLLM offers sha256) at some cost."""
    return hash((parent, tuple(tokens), extra))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, prefix_cache: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks ({num_blocks}) and block_size ({block_size}) must be at least 1")
        self.num_blocks, self.block_size, self.prefix_cache = num_blocks, block_size, prefix_cache
        self.refs = [0] * num_blocks
        # Free blocks, oldest first: allocate() takes from the front, release() appends, so a cached
        # block survives as long as possible after its last user.
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.hash_of: dict[int, int] = {}     # block id -> hash of its (full) contents
        self.block_of: dict[int, int] = {}    # hash -> block id holding those contents

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free)

    def lookup_prefix(self, tokens: Sequence[int], extra: object = None) -> tuple[list[int], list[int]]:
        """The cached full blocks that start `tokens`, each now referenced once more, and their hashes.
        The caller must leave at least one token to compute (the last token's logits are needed), so
        it passes tokens[:-1]."""
        blocks, hashes, parent = [], [], None
        if not self.prefix_cache:
            return blocks, hashes
        bs = self.block_size
        for start in range(0, len(tokens) - bs + 1, bs):
            h = block_hash(parent, tokens[start:start + bs], extra)
            block = self.block_of.get(h)
            if block is None:
                break
            self._take(block)
            blocks.append(block)
            hashes.append(h)
            parent = h
        return blocks, hashes

    def allocate(self) -> int:
        """A block for new contents: the least recently freed one (forgetting what it cached)."""
        if not self.free:
            raise NoFreeBlocks(f"all {self.num_blocks} KV blocks are in use")
        block = next(iter(self.free))
        old = self.hash_of.pop(block, None)
        if old is not None and self.block_of.get(old) == block:
            del self.block_of[old]
        self._take(block)
        return block

    def register(self, block: int, parent: int | None, tokens: Sequence[int], extra: object = None) -> int:
        """A block of a running sequence is now full: name it by its contents so others can share it."""
        h = block_hash(parent, tokens, extra)
        if self.prefix_cache and h not in self.block_of:
            self.hash_of[block] = h
            self.block_of[h] = block
        return h

    def release(self, blocks: Sequence[int]) -> None:
        """A sequence no longer needs these blocks (finished, cancelled or preempted). Released in
        reverse, so a sequence's tail blocks (least likely to be shared) are evicted first."""
        for block in reversed(blocks):
            self.refs[block] -= 1
            if self.refs[block] < 0:
                raise RuntimeError(f"KV block {block} released more often than taken")
            if self.refs[block] == 0:
                self.free[block] = None

    def _take(self, block: int) -> None:
        if self.refs[block] == 0:
            del self.free[block]
        self.refs[block] += 1
