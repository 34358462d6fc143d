//! Bulk work of the store (a replay or list of thousands of tasks) split over the machine's cores:
//! reading and parsing bundles or rows is syscalls and JSON, nothing shared.

/// Below this many items one thread does the work: starting threads would cost more.
const PAR_FROM: usize = 512;

/// `f` of each item, in order, over up to four scoped threads for many items.
pub fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    map_parts(items, |part| part.iter().map(&f).collect::<Vec<_>>()).into_iter().flatten().collect()
}

/// `f` of consecutive parts of `items`, the results in the parts' order: one part for few
/// items, one per thread (up to four) for many. For work that gathers its results per part
/// rather than one per item.
pub fn map_parts<T: Sync, R: Send>(items: &[T], f: impl Fn(&[T]) -> R + Sync) -> Vec<R> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    if items.len() < PAR_FROM || workers < 2 {
        return vec![f(items)];
    }
    let per = items.len().div_ceil(workers);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items.chunks(per).map(|part| (part, scope.spawn(move || f(part)))).collect();
        // A worker that failed (no thread, or a panic) has its part done here, so results stay
        // in order.
        handles.into_iter().map(|(part, h)| h.join().unwrap_or_else(|_| f(part))).collect()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_order_for_few_and_many() {
        for n in [0, 3, 511, 512, 5000] {
            let items: Vec<usize> = (0..n).collect();
            assert_eq!(super::map(&items, |x| x * 2), items.iter().map(|x| x * 2).collect::<Vec<_>>());
            let parts = super::map_parts(&items, |part| part.to_vec());
            assert_eq!(parts.concat(), items);
            assert!(parts.len() == 1 || n >= super::PAR_FROM);
        }
    }
}
