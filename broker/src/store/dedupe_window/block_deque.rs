//! A queue in fixed blocks of `BLOCK` items: pushed at the back, popped at the front, read by position.
//! In: items in order. Out: the item at a position from the front, and the front items as they go.
//!
//! Why not a `VecDeque`: a dedupe window holds millions of keys and, at the cap, a hundred thousand spans
//! or more per stream. A `VecDeque` doubles as it grows, so it may hold up to twice what it needs and, while
//! it grows, both copies at once. Here growing adds one block and never copies, and a block is freed once its
//! last item is popped: at most one block more than the items. (Measured on a 10 M event backlog at the cap,
//! one run each, docs/benchmarks.md "Session 59": 2.5 MiB less allocated outside RocksDB, within the spread.)

use std::collections::VecDeque;

pub(crate) struct BlockDeque<T, const BLOCK: usize> {
    blocks: VecDeque<Box<[T]>>,
    /// Where the front item is in `blocks[0]`.
    head: usize,
    len: usize,
}

impl<T, const BLOCK: usize> Default for BlockDeque<T, BLOCK> {
    fn default() -> Self {
        BlockDeque { blocks: VecDeque::new(), head: 0, len: 0 }
    }
}

impl<T: Copy + Default, const BLOCK: usize> BlockDeque<T, BLOCK> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The item `position` places from the front.
    ///
    /// # Panics
    /// If `position` is not below [`BlockDeque::len`].
    pub(crate) fn get(&self, position: usize) -> T {
        assert!(position < self.len, "block deque: position {position} of {}", self.len);
        let at = self.head + position;
        self.blocks[at / BLOCK][at % BLOCK]
    }

    pub(crate) fn front(&self) -> Option<T> {
        (self.len > 0).then(|| self.get(0))
    }

    pub(crate) fn back_mut(&mut self) -> Option<&mut T> {
        if self.len == 0 {
            return None;
        }
        let at = self.head + self.len - 1;
        Some(&mut self.blocks[at / BLOCK][at % BLOCK])
    }

    pub(crate) fn push_back(&mut self, item: T) {
        let at = self.head + self.len;
        if at / BLOCK == self.blocks.len() {
            self.blocks.push_back(vec![T::default(); BLOCK].into_boxed_slice());
        }
        self.blocks[at / BLOCK][at % BLOCK] = item;
        self.len += 1;
    }

    pub(crate) fn pop_front(&mut self) -> Option<T> {
        let item = self.front()?;
        self.head += 1;
        self.len -= 1;
        if self.head == BLOCK {
            self.blocks.pop_front();
            self.head = 0;
        }
        Some(item)
    }

    /// The number of items from the front for which `before` holds, where it holds for a prefix (as
    /// [`slice::partition_point`]).
    pub(crate) fn partition_point(&self, before: impl Fn(&T) -> bool) -> usize {
        let (mut low, mut high) = (0, self.len);
        while low < high {
            let middle = low + (high - low) / 2;
            if before(&self.get(middle)) {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        low
    }

    /// Blocks allocated now (each of `BLOCK` items).
    #[cfg(test)]
    pub(crate) fn block_count(&self) -> usize {
        self.blocks.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::BlockDeque;

    #[derive(Clone, Debug)]
    enum Op {
        Push(u32),
        Pop,
        BackAdd(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => any::<u32>().prop_map(Op::Push),
            2 => Just(Op::Pop),
            1 => any::<u32>().prop_map(Op::BackAdd),
        ]
    }

    proptest! {
        /// Every answer is a `VecDeque`'s, across blocks of three, and the blocks held never pass what the
        /// items need by more than one.
        #[test]
        fn a_block_deque_answers_as_a_vec_deque(ops in proptest::collection::vec(op(), 0..200)) {
            let mut deque = BlockDeque::<u32, 3>::default();
            let mut model = VecDeque::new();
            for op in ops {
                match op {
                    Op::Push(item) => {
                        deque.push_back(item);
                        model.push_back(item);
                    }
                    Op::Pop => prop_assert_eq!(deque.pop_front(), model.pop_front()),
                    Op::BackAdd(add) => {
                        if let Some(back) = deque.back_mut() {
                            *back = back.wrapping_add(add);
                        }
                        if let Some(back) = model.back_mut() {
                            *back = back.wrapping_add(add);
                        }
                    }
                }
                prop_assert_eq!(deque.len(), model.len());
                prop_assert_eq!(deque.front(), model.front().copied());
                let items: Vec<u32> = (0..deque.len()).map(|i| deque.get(i)).collect();
                prop_assert_eq!(&items, &Vec::from(model.clone()));
                prop_assert!(deque.block_count() <= model.len().div_ceil(3) + 1);
            }
        }

        /// Over items in order, with the front popped past block boundaries, the count of those below a
        /// threshold.
        #[test]
        fn the_partition_point_counts_from_the_front(pushed in 0u32..40, popped in 0u32..40, threshold in 0u32..50) {
            let popped = popped.min(pushed);
            let mut deque = BlockDeque::<u32, 3>::default();
            (0..pushed).for_each(|item| deque.push_back(item));
            (0..popped).for_each(|_| {
                deque.pop_front();
            });
            let expected = threshold.clamp(popped, pushed) - popped;
            prop_assert_eq!(deque.partition_point(|item| *item < threshold), expected as usize);
        }
    }

    #[test]
    #[should_panic(expected = "block deque: position 0 of 0")]
    fn a_position_past_the_end_is_a_bug() {
        BlockDeque::<u32, 3>::default().get(0);
    }
}
