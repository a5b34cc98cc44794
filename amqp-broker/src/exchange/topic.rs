//! Topic routing: binding patterns in a trie of dot-separated words, where `*` stands for exactly
//! one word and `#` for zero or more. Matching walks the trie once per message instead of testing
//! every binding.

use std::collections::{BTreeSet, HashMap};

/// A trie of topic patterns, each ending in a set of values (the bindings' destinations).
#[derive(Debug)]
pub(crate) struct TopicTrie<T> {
    root: Node<T>,
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        Self {
            root: Node::default(),
        }
    }
}

#[derive(Debug)]
struct Node<T> {
    /// Children by literal word, `*` and `#` included (they are just words to the trie).
    children: HashMap<String, Node<T>>,
    /// Values whose pattern ends here.
    values: BTreeSet<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            values: BTreeSet::new(),
        }
    }
}

impl<T: Ord + Clone> TopicTrie<T> {
    /// Adds `value` under `pattern`.
    pub fn insert(&mut self, pattern: &str, value: T) {
        let mut node = &mut self.root;
        for word in words(pattern) {
            node = node.children.entry(word.to_owned()).or_default();
        }
        node.values.insert(value);
    }

    /// Removes `value` from under `pattern`, pruning emptied branches.
    pub fn remove(&mut self, pattern: &str, value: &T) {
        Self::remove_at(&mut self.root, &words(pattern), value);
    }

    /// Returns whether `node` is now empty.
    fn remove_at(node: &mut Node<T>, words: &[&str], value: &T) -> bool {
        match words.split_first() {
            None => {
                node.values.remove(value);
            }
            Some((word, rest)) => {
                if let Some(child) = node.children.get_mut(*word) {
                    if Self::remove_at(child, rest, value) {
                        node.children.remove(*word);
                    }
                }
            }
        }
        node.values.is_empty() && node.children.is_empty()
    }

    /// Adds to `out` every value whose pattern matches `key`.
    pub fn matches(&self, key: &str, out: &mut BTreeSet<T>) {
        Self::walk(&self.root, &words(key), out);
    }

    fn walk(node: &Node<T>, words: &[&str], out: &mut BTreeSet<T>) {
        if let Some(hash) = node.children.get("#") {
            // `#` swallows zero or more words: try every split.
            for skip in 0..=words.len() {
                Self::walk(hash, &words[skip..], out);
            }
        }
        match words.split_first() {
            None => out.extend(node.values.iter().cloned()),
            Some((word, rest)) => {
                if let Some(child) = node.children.get(*word) {
                    if *word != "#" {
                        Self::walk(child, rest, out);
                    }
                }
                if let Some(star) = node.children.get("*") {
                    if *word != "*" {
                        Self::walk(star, rest, out);
                    }
                }
            }
        }
    }
}

/// The words of a key or pattern. As in RabbitMQ, the empty string has no words at all (so `#`
/// matches it and `*` does not), while `a..b` has an empty word in the middle.
fn words(s: &str) -> Vec<&str> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split('.').collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(patterns: &[&str], key: &str) -> Vec<String> {
        let mut trie = TopicTrie::default();
        for p in patterns {
            trie.insert(p, p.to_string());
        }
        let mut out = BTreeSet::new();
        trie.matches(key, &mut out);
        out.into_iter().collect()
    }

    #[test]
    fn star_is_exactly_one_word() {
        assert_eq!(routes(&["a.*.c"], "a.b.c"), ["a.*.c"]);
        assert!(routes(&["a.*.c"], "a.c").is_empty());
        assert!(routes(&["a.*.c"], "a.b.b.c").is_empty());
        assert_eq!(routes(&["*"], "a"), ["*"]);
        assert!(routes(&["*"], "a.b").is_empty());
        // An empty key has no words.
        assert!(routes(&["*"], "").is_empty());
        assert_eq!(routes(&[""], ""), [""]);
        assert_eq!(routes(&["a.*.b"], "a..b"), ["a.*.b"]);
    }

    #[test]
    fn hash_is_zero_or_more_words() {
        for key in ["", "a", "a.b", "a.b.c"] {
            assert_eq!(routes(&["#"], key), ["#"], "key {key:?}");
        }
        assert_eq!(routes(&["a.#"], "a"), ["a.#"]);
        assert_eq!(routes(&["a.#"], "a.b.c"), ["a.#"]);
        assert!(routes(&["a.#"], "b.a").is_empty());
        assert_eq!(routes(&["#.c"], "c"), ["#.c"]);
        assert_eq!(routes(&["#.c"], "a.b.c"), ["#.c"]);
        assert_eq!(routes(&["a.#.c"], "a.c"), ["a.#.c"]);
        assert_eq!(routes(&["a.#.c"], "a.x.y.c"), ["a.#.c"]);
        assert_eq!(routes(&["#.#"], "a"), ["#.#"]);
        assert_eq!(routes(&["*.#"], "a.b"), ["*.#"]);
        assert!(routes(&["*.#"], "").is_empty());
    }

    #[test]
    fn literals_must_match_and_wildcards_in_keys_are_literal() {
        assert_eq!(routes(&["a.b", "a.c"], "a.b"), ["a.b"]);
        assert!(routes(&["a.b"], "a.*").is_empty());
    }

    #[test]
    fn each_value_is_reported_once() {
        assert_eq!(routes(&["#", "a.#", "#.b", "a.b", "*.*"], "a.b").len(), 5);
    }

    #[test]
    fn removing_prunes_and_keeps_others() {
        let mut trie = TopicTrie::default();
        trie.insert("a.*", 1);
        trie.insert("a.b", 2);
        trie.remove("a.*", &1);
        let mut out = BTreeSet::new();
        trie.matches("a.b", &mut out);
        assert_eq!(out.into_iter().collect::<Vec<_>>(), [2]);
        trie.remove("a.b", &2);
        assert!(trie.root.children.is_empty());
    }
}
