//! [`TopicMap`]: the image's topics by name, copy-on-write in chunks, so that cloning an image
//! and then changing one topic copies one chunk of pointers and the chunk index, not a pointer
//! per topic of the cluster. Reads look like a `BTreeMap<String, Arc<TopicImage>>` (sorted by
//! name); equality is by content, whatever the chunking.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

use crate::TopicImage;

/// Topics per chunk before it splits in two.
pub const TOPIC_CHUNK_MAX: usize = 64;

type Chunk = BTreeMap<String, Arc<TopicImage>>;

/// Names up to and including `name` (`..=name` over `str` keys).
fn upto(name: &str) -> (Bound<&str>, Bound<&str>) {
    (Bound::Unbounded, Bound::Included(name))
}

#[derive(Clone, Default)]
pub struct TopicMap {
    /// Chunks of consecutive names, keyed by their first name; none is empty.
    chunks: BTreeMap<String, Arc<Chunk>>,
    len: usize,
}

impl TopicMap {
    /// The key of the chunk that holds (or would hold) `name`.
    fn chunk_key(&self, name: &str) -> Option<&String> {
        self.chunks
            .range::<str, _>(upto(name))
            .next_back()
            .or_else(|| self.chunks.iter().next())
            .map(|(k, _)| k)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<TopicImage>> {
        let (_, chunk) = self.chunks.range::<str, _>(upto(name)).next_back()?;
        chunk.get(name)
    }

    /// The topic's slot, its chunk copied first if a reader shares it.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Arc<TopicImage>> {
        let key = self.chunks.range::<str, _>(upto(name)).next_back()?.0.clone();
        let chunk = self.chunks.get_mut(&key)?;
        if !chunk.contains_key(name) {
            return None;
        }
        Arc::make_mut(chunk).get_mut(name)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn insert(&mut self, name: String, topic: Arc<TopicImage>) -> Option<Arc<TopicImage>> {
        let Some(key) = self.chunk_key(&name).cloned() else {
            self.chunks.insert(name.clone(), Arc::new(Chunk::from([(name, topic)])));
            self.len = 1;
            return None;
        };
        let mut chunk = self.chunks.remove(&key).unwrap_or_default();
        let old = Arc::make_mut(&mut chunk).insert(name, topic);
        if old.is_none() {
            self.len += 1;
        }
        if chunk.len() > TOPIC_CHUNK_MAX {
            let middle = chunk.keys().nth(chunk.len() / 2).cloned().unwrap_or_default();
            let upper = Arc::make_mut(&mut chunk).split_off(&middle);
            self.chunks.insert(middle, Arc::new(upper));
        }
        self.put_chunk(chunk);
        old
    }

    pub fn remove(&mut self, name: &str) -> Option<Arc<TopicImage>> {
        let key = self.chunks.range::<str, _>(upto(name)).next_back()?.0.clone();
        if !self.chunks.get(&key)?.contains_key(name) {
            return None;
        }
        let mut chunk = self.chunks.remove(&key)?;
        let old = Arc::make_mut(&mut chunk).remove(name);
        self.len -= usize::from(old.is_some());
        self.put_chunk(chunk);
        old
    }

    /// Files a chunk under its (possibly new) first name; an empty one goes.
    fn put_chunk(&mut self, chunk: Arc<Chunk>) {
        if let Some(first) = chunk.keys().next().cloned() {
            self.chunks.insert(first, chunk);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// By name, in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&String, &Arc<TopicImage>)> + '_ {
        self.chunks.values().flat_map(|c| c.iter())
    }

    /// By name, in order, from `name` on (`name..`): a page of a listing costs its own length,
    /// not the names before it.
    pub fn iter_from<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Arc<TopicImage>)> + 'a {
        let first_chunk = match self.chunks.range::<str, _>(upto(name)).next_back() {
            Some((key, _)) => Bound::Included(key.as_str()),
            None => Bound::Unbounded,
        };
        self.chunks
            .range::<str, _>((first_chunk, Bound::Unbounded))
            .flat_map(move |(_, c)| c.range::<str, _>((Bound::Included(name), Bound::Unbounded)))
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &String> + '_ {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Arc<TopicImage>> + '_ {
        self.iter().map(|(_, v)| v)
    }
}

impl PartialEq for TopicMap {
    fn eq(&self, other: &TopicMap) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for TopicMap {}

impl fmt::Debug for TopicMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl std::ops::Index<&str> for TopicMap {
    type Output = Arc<TopicImage>;

    fn index(&self, name: &str) -> &Arc<TopicImage> {
        self.get(name).unwrap_or_else(|| panic!("no topic {name} in the image"))
    }
}

impl<'a> IntoIterator for &'a TopicMap {
    type Item = (&'a String, &'a Arc<TopicImage>);
    type IntoIter = Box<dyn Iterator<Item = Self::Item> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TopicId;

    fn topic(name: &str) -> Arc<TopicImage> {
        Arc::new(TopicImage {
            name: name.into(),
            id: TopicId([1; 16]),
            partitions: BTreeMap::new(),
        })
    }

    #[test]
    fn behaves_as_a_sorted_map_whatever_the_order_and_chunking() {
        let mut map = TopicMap::default();
        let mut model = BTreeMap::new();
        // A fixed shuffle of 1,000 names: inserts, overwrites and removes across many chunks.
        let names: Vec<String> =
            (0..1_000u32).map(|i| format!("t{:04}", (i * 7_919) % 1_000)).collect();
        for (i, name) in names.iter().enumerate() {
            assert_eq!(
                map.insert(name.clone(), topic(name)).is_some(),
                model.insert(name.clone(), i).is_some()
            );
            if i % 3 == 0 {
                let gone = &names[i / 2];
                assert_eq!(map.remove(gone).is_some(), model.remove(gone).is_some());
            }
        }
        assert_eq!(map.len(), model.len());
        assert!(map.keys().eq(model.keys()));
        assert!(map.chunks.values().all(|c| !c.is_empty() && c.len() <= TOPIC_CHUNK_MAX));
        assert!(map.chunks.iter().all(|(k, c)| c.keys().next() == Some(k)));
        for name in &names {
            assert_eq!(map.contains_key(name), model.contains_key(name), "{name}");
        }
        assert!(map.get("a").is_none() && map.get("z").is_none());
        for from in ["", "a", "t0000", "t0499", "t05", "t0999", "t1", "z"] {
            assert!(
                map.iter_from(from).map(|(k, _)| k).eq(model
                    .range::<str, _>((Bound::Included(from), Bound::Unbounded))
                    .map(|(k, _)| k)),
                "from {from:?}"
            );
        }
        // Equality is by content: the same topics inserted in name order chunk differently.
        let mut sorted = TopicMap::default();
        for (k, v) in map.iter() {
            sorted.insert(k.clone(), v.clone());
        }
        assert_eq!(sorted, map);
    }

    #[test]
    fn a_change_copies_one_chunk_and_shares_the_rest() {
        let mut map = TopicMap::default();
        for i in 0..1_000 {
            let name = format!("t{i:04}");
            map.insert(name.clone(), topic(&name));
        }
        let reader = map.clone();
        let slot = map.get_mut("t0500").expect("present");
        Arc::make_mut(slot).partitions.insert(
            0,
            crate::PartitionImage {
                replicas: vec![],
                isr: vec![],
                leader: None,
                leader_epoch: crate::LeaderEpoch(0),
                partition_epoch: crate::PartitionEpoch(0),
                adding_replicas: vec![],
                removing_replicas: vec![],
            },
        );
        let shared = map
            .chunks
            .values()
            .zip(reader.chunks.values())
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert_eq!(shared, map.chunks.len() - 1, "one chunk copied");
        assert!(reader["t0500"].partitions.is_empty(), "the reader's copy is unchanged");
        assert_eq!(map["t0500"].partitions.len(), 1);
    }
}
