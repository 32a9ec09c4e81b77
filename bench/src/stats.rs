//! Summaries of repeated measurements: median, quartiles, min and max.
//!
//! The machine is shared (2 cores, other people compiling), so single runs
//! are noisy; every figure is the median of several runs and is shown with
//! its spread. Quartiles use linear interpolation between order statistics
//! (the "type 7" rule of R and NumPy's default), so small samples still give
//! sensible values.

use serde::{Deserialize, Serialize};

/// Median and spread of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of values.
    pub n: usize,
    /// Smallest value.
    pub min: f64,
    /// First quartile.
    pub q1: f64,
    /// Median.
    pub median: f64,
    /// Third quartile.
    pub q3: f64,
    /// Largest value.
    pub max: f64,
}

/// The `p`-quantile (0..=1) of sorted values, interpolated linearly.
fn quantile(sorted: &[f64], p: f64) -> f64 {
    let pos = p * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

impl Summary {
    /// Summarises `values`; `None` when there are none (or any is NaN).
    pub fn of(values: &[f64]) -> Option<Summary> {
        if values.is_empty() || values.iter().any(|v| v.is_nan()) {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        Some(Summary {
            n: v.len(),
            min: v[0],
            q1: quantile(&v, 0.25),
            median: quantile(&v, 0.5),
            q3: quantile(&v, 0.75),
            max: v[v.len() - 1],
        })
    }

    /// `median [min-max]` with `digits` decimals, for tables.
    pub fn cell(&self, digits: usize) -> String {
        if self.n == 1 {
            return format!("{:.digits$}", self.median);
        }
        format!(
            "{:.digits$} [{:.digits$}-{:.digits$}]",
            self.median, self.min, self.max
        )
    }
}

/// The ratio of two medians (`a / b`), `None` when `b` is zero.
pub fn ratio(a: &Summary, b: &Summary) -> Option<f64> {
    (b.median != 0.0).then(|| a.median / b.median)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_sample_has_its_middle_value_as_median() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!(s.n, 5);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 5.0);
        assert_eq!(s.median, 3.0);
        assert_eq!(s.q1, 2.0);
        assert_eq!(s.q3, 4.0);
    }

    #[test]
    fn even_sample_interpolates() {
        let s = Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        // Positions 0.75 and 2.25 between 1, 2, 3, 4.
        assert_eq!(s.q1, 1.75);
        assert_eq!(s.q3, 3.25);
    }

    #[test]
    fn one_value_is_every_statistic() {
        let s = Summary::of(&[7.5]).unwrap();
        assert_eq!(
            (s.min, s.q1, s.median, s.q3, s.max),
            (7.5, 7.5, 7.5, 7.5, 7.5)
        );
        assert_eq!(s.cell(1), "7.5");
    }

    #[test]
    fn empty_or_nan_has_no_summary() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn cell_shows_median_and_range() {
        let s = Summary::of(&[10.0, 12.26, 11.0]).unwrap();
        assert_eq!(s.cell(1), "11.0 [10.0-12.3]");
    }

    #[test]
    fn ratio_of_medians() {
        let a = Summary::of(&[2.0, 4.0, 6.0]).unwrap();
        let b = Summary::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(ratio(&a, &b), Some(2.0));
        let z = Summary::of(&[0.0]).unwrap();
        assert_eq!(ratio(&a, &z), None);
    }
}
