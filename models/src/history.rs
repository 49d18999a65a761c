//! A resource's history as training (and the learning of failure patterns) reads it.

use std::collections::BTreeMap;

/// The history of one resource, as training reads it: one column of values per metric (a metric
/// absent from a sample is NaN there). Columns rather than a map per sample: 20,000 samples of 17
/// metrics take 2.7 MB instead of about 36 MB of maps, and the trainer's peak memory was mostly those
/// maps.
#[derive(Clone, Debug, Default)]
pub struct ResourceHistory {
    /// Sample times, seconds (ascending once the history is built).
    pub ts: Vec<f64>,
    /// Metric names, in order of first appearance; `columns[i]` holds `names[i]`'s values.
    pub(crate) names: Vec<String>,
    pub(crate) columns: Vec<Vec<f64>>,
    /// Times of observed failures.
    pub failures: Vec<f64>,
    /// Times work was moved off the resource: windows reaching them are not labels.
    pub migrations: Vec<f64>,
}

impl ResourceHistory {
    /// Appends a sample.
    pub fn push<K: AsRef<str>, V: std::borrow::Borrow<f64>>(
        &mut self,
        ts: f64,
        metrics: impl IntoIterator<Item = (K, V)>,
    ) {
        let row = self.ts.len();
        self.ts.push(ts);
        for (k, (name, v)) in metrics.into_iter().enumerate() {
            let name = name.as_ref();
            let v = v.borrow();
            // Samples usually name the same metrics in the same order: try the k-th column first.
            let at_k = self.names.get(k).is_some_and(|n| n == name);
            let i = match at_k
                .then_some(k)
                .or_else(|| self.names.iter().position(|n| n == name))
            {
                Some(i) => i,
                None => {
                    self.names.push(name.to_owned());
                    self.columns.push(vec![f64::NAN; row + 1]);
                    self.names.len() - 1
                }
            };
            let col = &mut self.columns[i];
            col.resize(row + 1, f64::NAN);
            col[row] = *v;
        }
        for col in &mut self.columns {
            col.resize(row + 1, f64::NAN);
        }
    }

    /// Puts samples appended newest first into time order.
    pub fn reverse(&mut self) {
        self.ts.reverse();
        for c in &mut self.columns {
            c.reverse();
        }
    }

    pub fn len(&self) -> usize {
        self.ts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// One metric's values, NaN where a sample lacks it.
    pub fn column(&self, name: &str) -> Option<&[f64]> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| self.columns[i].as_slice())
    }

    /// Sample `row` as the engine reads samples.
    pub fn row(&self, row: usize) -> BTreeMap<String, f64> {
        self.names
            .iter()
            .zip(&self.columns)
            .filter(|(_, c)| !c[row].is_nan())
            .map(|(n, c)| (n.clone(), c[row]))
            .collect()
    }

    /// Forgets the oldest `n` samples (failures and migrations are times, and stay).
    pub fn drop_oldest(&mut self, n: usize) {
        let n = n.min(self.len());
        self.ts.drain(..n);
        for c in &mut self.columns {
            c.drain(..n);
        }
    }

    /// The samples from `from` on.
    pub(crate) fn tail(&self, from: usize) -> Self {
        Self {
            ts: self.ts[from..].to_vec(),
            names: self.names.clone(),
            columns: self.columns.iter().map(|c| c[from..].to_vec()).collect(),
            failures: self.failures.clone(),
            migrations: self.migrations.clone(),
        }
    }
}
