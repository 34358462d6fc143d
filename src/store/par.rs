//! Bulk work of the store (a replay or list of thousands of tasks) split over the machine's cores:
//! reading and parsing bundles or rows is syscalls and JSON, nothing shared.

/// Below this many items one thread does the work: starting threads would cost more.
const PAR_FROM: usize = 512;

/// `f` of each item, in order, over up to four scoped threads for many items.
pub fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    if items.len() < PAR_FROM || workers < 2 {
        return items.iter().map(f).collect();
    }
    let per = items.len().div_ceil(workers);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> =
            items.chunks(per).map(|chunk| (chunk, scope.spawn(move || chunk.iter().map(f).collect::<Vec<_>>()))).collect();
        // A worker that failed (no thread, or a panic) has its share done here, so results stay
        // in order.
        handles.into_iter().flat_map(|(chunk, h)| h.join().unwrap_or_else(|_| chunk.iter().map(f).collect())).collect()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_order_for_few_and_many() {
        for n in [0, 3, 511, 512, 5000] {
            let items: Vec<usize> = (0..n).collect();
            assert_eq!(super::map(&items, |x| x * 2), items.iter().map(|x| x * 2).collect::<Vec<_>>());
        }
    }
}
