//! DAMOS schemes from the command line, with damo's options and units (`--damos_action`,
//! `--damos_access_rate` in percent, `--damos_age` in µs, `--damos_quotas`, ...), or from a
//! JSON file or string in damo's `--schemes` format.

use anyhow::{Context as _, Result, bail};
use damon_engine::{
    Attrs,
    schemes::{
        AccessPattern, Action, Filter, FilterKind, Goal, Metric, Quota, Scheme, SchemeStatus,
        Watermarks, WmarkMetric,
    },
    units::{format_size, parse_duration_us, parse_size},
};
use serde_json::Value;

use super::options::MonitoringArgs;
use crate::{
    monitor::MonitorConfig,
    sys::{
        caps::{CapSet, Capability},
        memory,
    },
    vaddr::actions,
};

/// The `--damos_*` options, as damo takes them: each repeats once per scheme (in the order of
/// the `--damos_action`s), and several take a variable number of words, so they are read by
/// occurrence (see the `Args` impl below).
#[derive(Debug, Default)]
pub struct SchemeArgs {
    pub action: Vec<Vec<String>>,
    pub sz_region: Vec<Vec<String>>,
    pub access_rate: Vec<Vec<String>>,
    pub age: Vec<Vec<String>>,
    pub apply_interval: Vec<Vec<String>>,
    pub quotas: Vec<Vec<String>>,
    pub quota_time: Vec<Vec<String>>,
    pub quota_space: Vec<Vec<String>>,
    pub quota_interval: Vec<Vec<String>>,
    pub quota_weights: Vec<Vec<String>>,
    pub quota_goal: Vec<Vec<String>>,
    pub nr_quota_goals: Vec<Vec<String>>,
    pub filter: Vec<Vec<String>>,
    pub nr_filters: Vec<Vec<String>>,
    pub wmarks: Vec<Vec<String>>,
    pub schemes: Option<String>,
}

/// Each option: its name, its alias, its words (one name for all when they vary), its help.
const OPTIONS: [(&str, &str, &[&str], &str); 15] = [
    (
        "damos_action",
        "damos-action",
        &["ACTION [NODE]"],
        "A DAMOS scheme's action: cold, pageout, willneed, collapse, stat, or migrate_hot/migrate_cold NODE. One per scheme; the other --damos_* options configure the schemes in this order",
    ),
    (
        "damos_sz_region",
        "damos-sz-region",
        &["MIN", "MAX"],
        "Size range of the regions a scheme acts on, in bytes (`min`, `max`, 4K, 2MiB, ...)",
    ),
    (
        "damos_access_rate",
        "damos-access-rate",
        &["MIN", "MAX"],
        "Access-rate range, in percent of the samples per aggregation (`min`, `max`, 0, 5%)",
    ),
    (
        "damos_age",
        "damos-age",
        &["MIN", "MAX"],
        "Age range (how long the access rate has held): µs, or with a unit (`2m`, `max`)",
    ),
    (
        "damos_apply_interval",
        "damos-apply-interval",
        &["INTERVAL"],
        "How often the scheme is applied (µs, or with a unit; default: every aggregation)",
    ),
    (
        "damos_quotas",
        "damos-quotas",
        &["TIME_MS [SIZE [RESET_MS [SIZE_WEIGHT [RATE_WEIGHT [AGE_WEIGHT]]]]]"],
        "All quotas at once, as damo takes them",
    ),
    (
        "damos_quota_time",
        "damos-quota-time",
        &["TIME"],
        "Time the action may take per quota interval (ms, or with a unit)",
    ),
    (
        "damos_quota_space",
        "damos-quota-space",
        &["BYTES"],
        "Bytes the action may be tried on per quota interval",
    ),
    (
        "damos_quota_interval",
        "damos-quota-interval",
        &["INTERVAL"],
        "The quota interval (ms, or with a unit)",
    ),
    (
        "damos_quota_weights",
        "damos-quota-weights",
        &["SIZE", "RATE", "AGE"],
        "Priority weights (permil) of size, access rate and age: which regions go first under a quota",
    ),
    (
        "damos_quota_goal",
        "damos-quota-goal",
        &["METRIC TARGET [OPTIONS]"],
        "A quota goal the effective quota is tuned towards: some_mem_psi_us TARGET_US; user_input TARGET CURRENT; node_mem_{used,free}_bp TARGET NODE; node_memcg_{used,free}_bp TARGET NODE CGROUP",
    ),
    (
        "damos_nr_quota_goals",
        "damos-nr-quota-goals",
        &["N..."],
        "With several schemes: how many of the quota goals each takes, in order",
    ),
    (
        "damos_filter",
        "damos-filter",
        &["allow|reject [none] TYPE [ARGS]"],
        "A filter, as damo's: TYPE is anon, unmapped, memcg CGROUP, addr START END, or target INDEX",
    ),
    (
        "damos_nr_filters",
        "damos-nr-filters",
        &["N..."],
        "With several schemes: how many of the filters each takes, in order",
    ),
    (
        "damos_wmarks",
        "damos-wmarks",
        &["METRIC", "INTERVAL_US", "HIGH", "MID", "LOW"],
        "Watermarks: METRIC is none or free_mem_rate; the scheme acts while free memory (permil) is under HIGH and over LOW, and starts again under MID",
    ),
];

/// The words each option takes.
fn arity(name: &str) -> std::ops::RangeInclusive<usize> {
    match name {
        "damos_sz_region" | "damos_access_rate" | "damos_age" => 2..=2,
        "damos_quotas" => 1..=6,
        "damos_quota_weights" => 3..=3,
        "damos_quota_goal" => 2..=4,
        "damos_nr_quota_goals" | "damos_nr_filters" | "damos_filter" => 1..=usize::MAX,
        "damos_wmarks" => 5..=5,
        "damos_action" => 1..=2,
        _ => 1..=1,
    }
}

impl clap::FromArgMatches for SchemeArgs {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let words = |name: &str| -> Vec<Vec<String>> {
            m.get_occurrences::<String>(name)
                .map(|o| o.map(|words| words.cloned().collect()).collect())
                .unwrap_or_default()
        };
        Ok(Self {
            action: words("damos_action"),
            sz_region: words("damos_sz_region"),
            access_rate: words("damos_access_rate"),
            age: words("damos_age"),
            apply_interval: words("damos_apply_interval"),
            quotas: words("damos_quotas"),
            quota_time: words("damos_quota_time"),
            quota_space: words("damos_quota_space"),
            quota_interval: words("damos_quota_interval"),
            quota_weights: words("damos_quota_weights"),
            quota_goal: words("damos_quota_goal"),
            nr_quota_goals: words("damos_nr_quota_goals"),
            filter: words("damos_filter"),
            nr_filters: words("damos_nr_filters"),
            wmarks: words("damos_wmarks"),
            schemes: m.get_one::<String>("schemes").cloned(),
        })
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for SchemeArgs {
    fn augment_args(mut cmd: clap::Command) -> clap::Command {
        use clap::{Arg, ArgAction};
        for (name, alias, words, help) in OPTIONS {
            let arity = arity(name);
            let mut arg = Arg::new(name)
                .long(name)
                .alias(alias)
                .help(help)
                .num_args(arity.clone())
                .action(ArgAction::Append)
                .help_heading("DAMOS schemes (damo's options)");
            arg = arg.value_names(words.iter().copied());
            cmd = cmd.arg(arg);
        }
        cmd.arg(
            Arg::new("schemes")
                .short('c')
                .long("schemes")
                .value_name("JSON|FILE")
                .help("Schemes in damo's JSON format: a file, or the JSON itself.")
                .help_heading("DAMOS schemes (damo's options)")
                .conflicts_with("damos_action"),
        )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// The largest schemes file read.
const MAX_SCHEMES_FILE: u64 = 1 << 20;

impl SchemeArgs {
    /// The monitoring run's settings with the schemes asked for.
    pub fn config(&self, monitoring: &MonitoringArgs) -> Result<MonitorConfig> {
        let mut config = monitoring.resolve()?.monitor_config()?;
        config.schemes = self.resolve(&config.attrs)?;
        Ok(config)
    }

    /// The schemes asked for, checked against what udamon can do here; `attrs` give the units
    /// of access rates and ages.
    pub fn resolve(&self, attrs: &Attrs) -> Result<Vec<Scheme>> {
        let schemes = match &self.schemes {
            Some(text) => from_json(text, attrs)?,
            None => self.schemes_of_options(attrs)?,
        };
        for (i, s) in schemes.iter().enumerate() {
            check(s).with_context(|| format!("scheme {i} ({})", s.action.name()))?;
        }
        Ok(schemes)
    }

    fn schemes_of_options(&self, attrs: &Attrs) -> Result<Vec<Scheme>> {
        let n = self.action.len();
        let too_many = |given: usize, option: &str| -> Result<()> {
            if given > n {
                bail!(
                    "{given} --{option} for {n} --damos_action: give one per scheme, after its action"
                );
            }
            Ok(())
        };
        too_many(self.sz_region.len(), "damos_sz_region")?;
        too_many(self.access_rate.len(), "damos_access_rate")?;
        too_many(self.age.len(), "damos_age")?;
        too_many(self.apply_interval.len(), "damos_apply_interval")?;
        too_many(self.quotas.len(), "damos_quotas")?;
        too_many(self.quota_interval.len(), "damos_quota_interval")?;
        too_many(self.quota_time.len(), "damos_quota_time")?;
        too_many(self.quota_space.len(), "damos_quota_space")?;
        too_many(self.quota_weights.len(), "damos_quota_weights")?;
        too_many(self.wmarks.len(), "damos_wmarks")?;
        let goals =
            split_per_scheme(&self.quota_goal, &counts(&self.nr_quota_goals)?, n, "quota_goal")?;
        let filters = split_per_scheme(&self.filter, &counts(&self.nr_filters)?, n, "filter")?;
        let mut schemes = Vec::with_capacity(n);
        for i in 0..n {
            let words = &self.action[i];
            let (action, node) = match &words[..] {
                [action] => (action, None),
                [action, node] => (action, Some(node)),
                _ => bail!(
                    "--damos_action {}: an action, and a node for migrations",
                    words.join(" ")
                ),
            };
            let action: Action = action.parse().context("--damos_action")?;
            let node = node
                .map(|n| n.parse::<u32>().with_context(|| format!("--damos_action: node `{n}`")))
                .transpose()?;
            let mut pattern = AccessPattern::default();
            if let Some([min, max]) = self.sz_region.get(i).map(Vec::as_slice) {
                (pattern.min_sz, pattern.max_sz) = (
                    size(min).context("--damos_sz_region")?,
                    size(max).context("--damos_sz_region")?,
                );
            }
            if let Some([min, max]) = self.access_rate.get(i).map(Vec::as_slice) {
                (pattern.min_nr_accesses, pattern.max_nr_accesses) = (
                    rate(&Value::from(min.as_str()), "percent", attrs)
                        .context("--damos_access_rate")?,
                    rate(&Value::from(max.as_str()), "percent", attrs)
                        .context("--damos_access_rate")?,
                );
            }
            if let Some([min, max]) = self.age.get(i).map(Vec::as_slice) {
                (pattern.min_age_us, pattern.max_age_us) = (
                    age(&Value::from(min.as_str()), "usec", attrs).context("--damos_age")?,
                    age(&Value::from(max.as_str()), "usec", attrs).context("--damos_age")?,
                );
            }
            let mut scheme = Scheme::new(pattern, action);
            scheme.target_nid = node;
            if let Some(text) = self.apply_interval.get(i).and_then(|w| w.first()) {
                scheme.apply_interval_us = micros(text).context("--damos_apply_interval")?;
            }
            if let Some(words) = self.quotas.get(i) {
                scheme.quota = quotas(words).context("--damos_quotas")?;
            }
            // As damo: the quota options one by one make a quota with --damos_quota_interval
            // (and weights 1, 1, 1 unless given).
            let one_by_one = [&self.quota_time, &self.quota_space, &self.quota_weights];
            match (self.quota_interval.get(i), one_by_one.iter().any(|o| o.get(i).is_some())) {
                (Some(_), _) if self.quotas.get(i).is_some() => bail!(
                    "scheme {i}: give --damos_quotas or the --damos_quota_* options, not both"
                ),
                (Some(_), _) => {
                    scheme.quota.weight_sz = 1;
                    scheme.quota.weight_nr_accesses = 1;
                    scheme.quota.weight_age = 1;
                }
                (None, true) => bail!(
                    "scheme {i}: --damos_quota_time, _space and _weights need --damos_quota_interval"
                ),
                (None, false) => {}
            }
            let quota = &mut scheme.quota;
            if let Some(text) = self.quota_time.get(i).and_then(|w| w.first()) {
                quota.time_ms = millis(text).context("--damos_quota_time")?;
            }
            if let Some(text) = self.quota_space.get(i).and_then(|w| w.first()) {
                quota.sz = size(text).context("--damos_quota_space")?;
            }
            if let Some(text) = self.quota_interval.get(i).and_then(|w| w.first()) {
                quota.reset_interval_ms = millis(text).context("--damos_quota_interval")?;
            }
            if let Some(words) = self.quota_weights.get(i) {
                [quota.weight_sz, quota.weight_nr_accesses, quota.weight_age] =
                    weights(words).context("--damos_quota_weights")?;
            }
            for words in goals[i] {
                quota.goals.push(
                    goal(words)
                        .with_context(|| format!("--damos_quota_goal {}", words.join(" ")))?,
                );
            }
            if let Some(words) = self.wmarks.get(i) {
                scheme.wmarks = wmarks(words).context("--damos_wmarks")?;
            }
            let words: Vec<&str> = filters[i].iter().flatten().map(String::as_str).collect();
            scheme.filters = filters_v2(&words).context("--damos_filter")?;
            schemes.push(scheme);
        }
        Ok(schemes)
    }
}

/// `--damos_nr_*` counts.
fn counts(words: &[Vec<String>]) -> Result<Vec<usize>> {
    words
        .iter()
        .flatten()
        .map(|w| w.parse().with_context(|| format!("`{w}` is not a count")))
        .collect()
}

/// Each scheme's share of a repeated option: all of it for one scheme; by `--damos_nr_*`
/// for several.
fn split_per_scheme<'a>(
    all: &'a [Vec<String>],
    counts: &[usize],
    schemes: usize,
    name: &str,
) -> Result<Vec<&'a [Vec<String>]>> {
    if all.is_empty() && counts.is_empty() {
        return Ok(vec![&[]; schemes]);
    }
    if schemes == 0 {
        bail!("--damos_{name} without a --damos_action");
    }
    let counts = if counts.is_empty() && schemes == 1 { vec![all.len()] } else { counts.to_vec() };
    if counts.len() != schemes || counts.iter().sum::<usize>() != all.len() {
        bail!(
            "--damos_nr_{name}s must give, for each of the {schemes} schemes, how many of the {} --damos_{name} are its",
            all.len()
        );
    }
    let mut rest = all;
    Ok(counts
        .iter()
        .map(|&k| {
            let (mine, later) = rest.split_at(k);
            rest = later;
            mine
        })
        .collect())
}

/// What udamon cannot do is refused before monitoring starts.
pub fn check(s: &Scheme) -> Result<()> {
    if actions::how(s.action).map_err(anyhow::Error::msg)? == actions::How::Migrate {
        let Some(node) = s.target_nid else {
            bail!("give the node to move pages to: --damos_action {} NODE", s.action.name());
        };
        let online = memory::nodes_online();
        if online.len() < 2 {
            bail!("migration needs two NUMA nodes or more; this machine has {}", online.len());
        }
        if !online.contains(&node) {
            bail!("no NUMA node {node} (online: {online:?})");
        }
    }
    for g in &s.quota.goals {
        memory::readable(&g.metric)
            .map_err(|why| anyhow::anyhow!("quota goal {}: {why}", g.metric.name()))?;
    }
    let by_frame = s.filters.iter().find(|f| {
        matches!(f.kind, FilterKind::Memcg(_) | FilterKind::Active | FilterKind::HugepageSize(..))
    });
    if let Some(f) = by_frame
        && !CapSet::current().has(Capability::SysAdmin)
    {
        bail!(
            "the {} filter needs CAP_SYS_ADMIN: without it pagemap hides which frame backs a page, and so what the frame is",
            f.kind.name()
        );
    }
    if s.wmarks.metric.is_some() && memory::free_permil().is_none() {
        bail!("watermarks: free memory cannot be read from /proc/meminfo");
    }
    s.validate()
}

/// A size: bytes with an optional unit, or `min`/`max`.
fn size(text: &str) -> Result<u64> {
    match text {
        "min" => Ok(0),
        "max" => Ok(u64::MAX),
        _ => parse_size(text),
    }
}

/// µs: a bare number, or a duration with a unit; `min`/`max`.
fn micros(text: &str) -> Result<u64> {
    match text.trim() {
        "min" => Ok(0),
        "max" => Ok(u64::MAX),
        // damo writes short times in ns (`0 ns`).
        t if t.ends_with("ns") => {
            let ns = t.trim_end_matches("ns").trim();
            Ok(ns.parse::<u64>().with_context(|| format!("`{t}` is not a time"))? / 1000)
        }
        t => parse_duration_us(t),
    }
}

/// ms: a bare number, or a duration with a unit; `max`.
fn millis(text: &str) -> Result<u64> {
    let text = text.trim();
    if text == "max" {
        return Ok(u64::MAX / 1000);
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().with_context(|| format!("`{text}` is not a number of ms"));
    }
    Ok(micros(text)? / 1000)
}

/// A JSON value or word as text (damo writes numbers both ways).
fn text(v: &Value) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.trim().to_owned()),
        Value::Number(n) => Ok(n.to_string()),
        other => bail!("expected a number or a word, found {other}"),
    }
}

/// An access rate bound in samples per aggregation, from percent (`5`, `5%`) or samples.
fn rate(v: &Value, unit: &str, attrs: &Attrs) -> Result<u32> {
    let samples = attrs.samples_per_aggr();
    let text = text(v)?;
    match text.as_str() {
        "min" => return Ok(0),
        "max" => return Ok(samples),
        _ => {}
    }
    let number = text.trim_end_matches('%').trim();
    let value: f64 = number.parse().map_err(|_| anyhow::anyhow!("`{text}` is not a number"))?;
    match unit {
        "percent" if (0.0..=100.0).contains(&value) => Ok((value * samples as f64 / 100.0) as u32),
        "percent" => bail!("`{text}`: give 0 to 100 percent"),
        "samples" | "sample_intervals" if value >= 0.0 => Ok(value.min(u32::MAX as f64) as u32),
        _ => bail!("`{text}`: unknown access rate (unit {unit})"),
    }
}

/// An age bound in µs, from µs (or a duration) or aggregation intervals.
fn age(v: &Value, unit: &str, attrs: &Attrs) -> Result<u64> {
    let text = text(v)?;
    match unit {
        "usec" => micros(&text),
        "aggr_intervals" => match text.as_str() {
            "min" => Ok(0),
            "max" => Ok(u64::MAX),
            _ => Ok(text
                .parse::<u64>()
                .with_context(|| format!("`{text}` is not a count"))?
                .saturating_mul(attrs.aggr_us)),
        },
        _ => bail!("unknown age unit `{unit}` (usec or aggr_intervals)"),
    }
}

fn quotas(words: &[String]) -> Result<Quota> {
    let mut quota = Quota::default();
    let get = |i: usize| words.get(i).map(String::as_str);
    if let Some(t) = get(0) {
        quota.time_ms = millis(t)?;
    }
    if let Some(s) = get(1) {
        quota.sz = size(s)?;
    }
    quota.reset_interval_ms = get(2).map_or(Ok(u64::MAX / 1000), millis)?;
    if words.len() > 3 {
        let mut w = [0u32; 3];
        for (k, word) in words[3..].iter().enumerate() {
            w[k] = permil(word)? as u32;
        }
        [quota.weight_sz, quota.weight_nr_accesses, quota.weight_age] = w;
    }
    Ok(quota)
}

fn weights(words: &[String]) -> Result<[u32; 3]> {
    let mut w = [0u32; 3];
    for (k, word) in words.iter().enumerate() {
        w[k] = permil(word)? as u32;
    }
    Ok(w)
}

/// Permil: a bare number, or a percentage (`50%`, `50 %` as damo writes it: 500).
fn permil(text: &str) -> Result<u64> {
    let bad = || format!("`{text}` is not a number of permil or a percentage");
    match text.trim().strip_suffix('%') {
        Some(percent) => {
            let p: f64 = percent.trim().parse().with_context(bad)?;
            anyhow::ensure!(p >= 0.0, bad());
            Ok((p * 10.0).round() as u64)
        }
        None => text.trim().parse().with_context(bad),
    }
}

/// A quota goal: METRIC TARGET [OPTIONS] (see `SchemeArgs::quota_goal`).
fn goal(words: &[String]) -> Result<Goal> {
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let number = |t: &str| -> Result<u64> {
        t.parse().with_context(|| format!("`{t}` is not a whole number"))
    };
    let node =
        |t: &str| -> Result<u32> { t.parse().with_context(|| format!("`{t}` is not a node id")) };
    let (metric, target, current) = match w[..] {
        ["user_input", target, current] => (Metric::UserInput, number(target)?, number(current)?),
        ["some_mem_psi_us", target] => (Metric::SomeMemPsiUs, micros(target)?, 0),
        ["node_mem_used_bp", target, n] => (Metric::NodeMemUsedBp(node(n)?), number(target)?, 0),
        ["node_mem_free_bp", target, n] => (Metric::NodeMemFreeBp(node(n)?), number(target)?, 0),
        ["node_memcg_used_bp", target, n, path] => {
            (Metric::NodeMemcgUsedBp(node(n)?, path.to_owned()), number(target)?, 0)
        }
        ["node_memcg_free_bp", target, n, path] => {
            (Metric::NodeMemcgFreeBp(node(n)?, path.to_owned()), number(target)?, 0)
        }
        [name, ..] => bail!(
            "`{name}` with {} values: give user_input TARGET CURRENT, some_mem_psi_us TARGET, node_mem_{{used,free}}_bp TARGET NODE or node_memcg_{{used,free}}_bp TARGET NODE CGROUP",
            w.len() - 1
        ),
        [] => bail!("no metric"),
    };
    Ok(Goal::new(metric, target, current))
}

fn wmarks(words: &[String]) -> Result<Watermarks> {
    let metric = match words[0].as_str() {
        "none" => None,
        "free_mem_rate" => Some(WmarkMetric::FreeMemRate),
        other => bail!("unknown watermark metric `{other}` (none or free_mem_rate)"),
    };
    Ok(Watermarks {
        metric,
        interval_us: micros(&words[1])?,
        high: permil(&words[2])?,
        mid: permil(&words[3])?,
        low: permil(&words[4])?,
    })
}

const FILTER_TYPES: &str =
    "anon, unmapped, memcg PATH, active, hugepage_size MIN MAX, addr START END, target INDEX";

/// damo's filter words: `allow|reject [none] TYPE [ARGS]`, repeated.
fn filters_v2(mut words: &[&str]) -> Result<Vec<Filter>> {
    let mut filters = Vec::new();
    while let [verdict, rest @ ..] = words {
        let allow = match *verdict {
            "allow" => true,
            "reject" | "deny" | "block" => false,
            other => bail!("`{other}`: a filter starts with allow or reject"),
        };
        let (matching, rest) = match rest {
            ["none", rest @ ..] => (false, rest),
            _ => (true, rest),
        };
        let (kind, rest) = match rest {
            ["anon", rest @ ..] => (FilterKind::Anon, rest),
            ["unmapped", rest @ ..] => (FilterKind::Unmapped, rest),
            ["memcg", path, rest @ ..] => (FilterKind::Memcg((*path).to_owned()), rest),
            ["addr", start, end, rest @ ..] => {
                (FilterKind::Addr(address(start)?, address(end)?), rest)
            }
            ["target", index, rest @ ..] => (
                FilterKind::Target(index.parse().with_context(|| format!("target `{index}`"))?),
                rest,
            ),
            ["active", rest @ ..] => (FilterKind::Active, rest),
            ["hugepage_size", min, max, rest @ ..] => {
                (FilterKind::HugepageSize(size(min)?, size(max)?), rest)
            }
            ["young", ..] => bail!(
                "the young filter is not supported by udamon: reading and clearing each page's accessed bit would disturb its own sampling ({FILTER_TYPES} are)"
            ),
            [kind @ ("memcg" | "hugepage_size" | "addr" | "target"), ..] => {
                bail!("the {kind} filter lacks its arguments ({FILTER_TYPES})")
            }
            [kind, ..] => bail!("unknown filter type `{kind}` ({FILTER_TYPES})"),
            [] => bail!("a filter without a type"),
        };
        filters.push(Filter { kind, matching, allow });
        words = rest;
    }
    Ok(filters)
}

/// An address: decimal, or hex with 0x.
fn address(text: &str) -> Result<u64> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    };
    parsed.with_context(|| format!("`{text}` is not an address"))
}

/// damo's `--schemes`: a JSON list of schemes, or a file holding one.
fn from_json(text: &str, attrs: &Attrs) -> Result<Vec<Scheme>> {
    let path = std::path::Path::new(text);
    let json = if !text.trim_start().starts_with('[') && path.exists() {
        crate::util::read_text(path, MAX_SCHEMES_FILE, "--schemes")?
    } else {
        text.to_owned()
    };
    let value: Value = serde_json::from_str(&json).map_err(|err| {
        if path.exists() || json.trim_start().starts_with('[') {
            anyhow::anyhow!("--schemes: not JSON: {err}")
        } else {
            anyhow::anyhow!("--schemes {text}: neither a file nor JSON")
        }
    })?;
    let Value::Array(list) = value else { bail!("--schemes: expected a JSON list of schemes") };
    list.iter()
        .enumerate()
        .map(|(i, v)| scheme_json(v, attrs).with_context(|| format!("--schemes: scheme {i}")))
        .collect()
}

fn scheme_json(v: &Value, attrs: &Attrs) -> Result<Scheme> {
    let Value::Object(_) = v else { bail!("expected an object, found {v}") };
    let field = |v: &Value, key: &str| v.get(key).filter(|f| !f.is_null()).cloned();
    // The parts that are objects in damo's format must be.
    for key in ["access_pattern", "quotas", "watermarks"] {
        if let Some(part) = field(v, key).filter(|p| !p.is_object()) {
            bail!("{key} must be an object, not {part}");
        }
    }
    if let Some(filters) = field(v, "filters").filter(|f| !f.is_array()) {
        bail!("filters must be a list, not {filters}");
    }
    let action = field(v, "action").context("no action")?;
    let action: Action = text(&action)?.parse()?;
    let mut pattern = AccessPattern::default();
    if let Some(p) = field(v, "access_pattern") {
        let range = |key: &str| -> Option<(Value, Value)> {
            let r = p.get(key)?;
            Some((r.get("min")?.clone(), r.get("max")?.clone()))
        };
        if let Some((min, max)) = range("sz_bytes") {
            (pattern.min_sz, pattern.max_sz) = (size(&text(&min)?)?, size(&text(&max)?)?);
        }
        let unit = |key: &str, default: &str| {
            p.get(key).and_then(Value::as_str).unwrap_or(default).to_owned()
        };
        if let Some((min, max)) = range("nr_accesses") {
            let unit = unit("nr_accesses_unit", "percent");
            (pattern.min_nr_accesses, pattern.max_nr_accesses) =
                (rate(&min, &unit, attrs)?, rate(&max, &unit, attrs)?);
        }
        if let Some((min, max)) = range("age") {
            let unit = unit("age_unit", "usec");
            (pattern.min_age_us, pattern.max_age_us) =
                (age(&min, &unit, attrs)?, age(&max, &unit, attrs)?);
        }
    }
    let mut scheme = Scheme::new(pattern, action);
    if let Some(node) = field(v, "target_nid") {
        scheme.target_nid = Some(text(&node)?.parse().context("target_nid")?);
    }
    if let Some(i) = field(v, "apply_interval_us") {
        scheme.apply_interval_us = micros(&text(&i)?)?;
    }
    if let Some(q) = field(v, "quotas") {
        let get = |key: &str| q.get(key).filter(|f| !f.is_null()).map(text).transpose();
        let quota = &mut scheme.quota;
        if let Some(t) = get("time_ms")? {
            quota.time_ms = millis(&t)?;
        }
        if let Some(s) = get("sz_bytes")? {
            quota.sz = size(&s)?;
        }
        if let Some(r) = get("reset_interval_ms")? {
            quota.reset_interval_ms = millis(&r)?;
        }
        if let Some(w) = q.get("weights") {
            let weight = |key: &str| -> Result<u32> {
                w.get(key).map_or(Ok(0), |v| Ok(permil(&text(v)?)? as u32))
            };
            quota.weight_sz = weight("sz_permil")?;
            quota.weight_nr_accesses = weight("nr_accesses_permil")?;
            quota.weight_age = weight("age_permil")?;
        }
        for g in q.get("goals").and_then(Value::as_array).into_iter().flatten() {
            let mut words = vec![text(g.get("metric").context("a goal without a metric")?)?];
            words.push(text(g.get("target_value").context("a goal without a target_value")?)?);
            match words[0].as_str() {
                "user_input" => words.push(g.get("current_value").map_or(Ok("0".into()), text)?),
                "node_mem_used_bp" | "node_mem_free_bp" => {
                    words.push(text(g.get("nid").context("a node goal without nid")?)?)
                }
                "node_memcg_used_bp" | "node_memcg_free_bp" => {
                    words.push(text(g.get("nid").context("a node goal without nid")?)?);
                    words.push(text(
                        g.get("memcg_path").context("a memcg goal without memcg_path")?,
                    )?);
                }
                _ => {}
            }
            quota.goals.push(goal(&words)?);
        }
    }
    if let Some(w) = field(v, "watermarks") {
        let words: Vec<String> =
            ["metric", "interval_us", "high_permil", "mid_permil", "low_permil"]
                .iter()
                .map(|k| {
                    w.get(*k).with_context(|| format!("watermarks without {k}")).and_then(text)
                })
                .collect::<Result<_>>()?;
        scheme.wmarks = wmarks(&words)?;
    }
    for f in field(v, "filters").as_ref().and_then(Value::as_array).into_iter().flatten() {
        let kind = text(f.get("filter_type").context("a filter without filter_type")?)?;
        let flag =
            |key: &str, default: bool| f.get(key).and_then(Value::as_bool).unwrap_or(default);
        let mut words = vec![
            if flag("allow", flag("filter_pass", false)) { "allow" } else { "reject" }.to_owned(),
        ];
        if !flag("matching", true) {
            words.push("none".into());
        }
        words.push(kind.clone());
        match kind.as_str() {
            "memcg" => words.push(text(f.get("memcg_path").context("memcg without memcg_path")?)?),
            "addr" => {
                let r = f.get("address_range").context("addr without address_range")?;
                words.push(text(r.get("start").context("address_range without start")?)?);
                words.push(text(r.get("end").context("address_range without end")?)?);
            }
            "target" => words
                .push(text(f.get("damon_target_idx").context("target without damon_target_idx")?)?),
            "hugepage_size" => {
                let r = f.get("hugepage_size").context("hugepage_size without its min and max")?;
                words.push(text(r.get("min").context("hugepage_size without min")?)?);
                words.push(text(r.get("max").context("hugepage_size without max")?)?);
            }
            _ => {}
        }
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        scheme.filters.extend(filters_v2(&words)?);
    }
    Ok(scheme)
}

/// A scheme's stats so far, for people.
pub fn status_line(index: usize, s: &SchemeStatus) -> String {
    let st = &s.stats;
    let mut line = format!(
        "scheme {index} ({}): tried {} regions, {}; applied to {}",
        s.action.name(),
        st.nr_tried,
        format_size(st.sz_tried),
        format_size(st.sz_applied)
    );
    if let Some(quota) = s.effective_quota {
        line += &format!(
            "; quota {} per interval, used up {} times",
            format_size(quota),
            st.qt_exceeds
        );
    }
    if !s.active {
        line += "; held off by its watermarks";
    }
    line + "\n"
}

#[cfg(test)]
mod tests;
