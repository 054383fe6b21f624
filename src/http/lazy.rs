//! A queue that costs one pointer until it is used: most connections never hold a response
//! waiting for its request, nor segments behind a held head, and an idle connection's size is
//! what the flow table multiplies.

use std::collections::VecDeque;

// The box is the point: a VecDeque is 32 bytes inline even when empty, a box of one is 8.
#[allow(clippy::box_collection)]
#[derive(Debug)]
pub(crate) struct LazyDeque<T>(Option<Box<VecDeque<T>>>);

impl<T> Default for LazyDeque<T> {
    fn default() -> Self {
        LazyDeque(None)
    }
}

impl<T> LazyDeque<T> {
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|q| q.is_empty())
    }

    pub fn front(&self) -> Option<&T> {
        self.0.as_ref()?.front()
    }

    pub fn get(&self, i: usize) -> Option<&T> {
        self.0.as_ref()?.get(i)
    }

    pub fn pop_front(&mut self) -> Option<T> {
        self.0.as_mut()?.pop_front()
    }

    pub fn push_back(&mut self, v: T) {
        self.0.get_or_insert_default().push_back(v);
    }

    pub fn clear(&mut self) {
        if let Some(q) = &mut self.0 {
            q.clear();
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.iter().flat_map(|q| q.iter())
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.0.iter_mut().flat_map(|q| q.iter_mut())
    }

    /// Frees the queue when it holds nothing.
    pub fn release(&mut self) {
        if self.is_empty() {
            self.0 = None;
        }
    }
}
