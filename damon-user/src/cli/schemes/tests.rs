use clap::Parser;

use super::*;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    schemes: SchemeArgs,
}

fn schemes(args: &str) -> Result<Vec<Scheme>> {
    let cli = Cli::try_parse_from(std::iter::once("udamon").chain(args.split_whitespace()))?;
    cli.schemes.resolve(&Attrs::default())
}

#[test]
fn damo_options_make_schemes_in_damo_units() {
    let s = schemes(
        "--damos_action pageout --damos_access_rate 0% 0% --damos_age 2s max \
         --damos_quotas 10 128M 1000 0 0 1 \
         --damos_wmarks free_mem_rate 5000000 500 400 200 --damos_filter reject anon",
    )
    .unwrap();
    let [s] = &s[..] else { panic!("one scheme: {s:?}") };
    assert_eq!(s.action, Action::Pageout);
    assert_eq!((s.pattern.min_nr_accesses, s.pattern.max_nr_accesses), (0, 0));
    assert_eq!((s.pattern.min_age_us, s.pattern.max_age_us), (2_000_000, u64::MAX));
    assert_eq!((s.quota.time_ms, s.quota.sz, s.quota.reset_interval_ms), (10, 128 << 20, 1000));
    assert_eq!((s.quota.weight_nr_accesses, s.quota.weight_age), (0, 1));
    assert_eq!(s.wmarks.metric, Some(WmarkMetric::FreeMemRate));
    assert_eq!(
        (s.wmarks.interval_us, s.wmarks.high, s.wmarks.mid, s.wmarks.low),
        (5_000_000, 500, 400, 200)
    );
    assert_eq!(s.filters, vec![Filter { kind: FilterKind::Anon, matching: true, allow: false }]);
    // Rates are percent of the samples per aggregation (20 by default): 5% is one sample.
    let s =
        schemes("--damos_action stat --damos_access_rate 5 max --damos_sz_region 4K 2MiB").unwrap();
    assert_eq!((s[0].pattern.min_nr_accesses, s[0].pattern.max_nr_accesses), (1, 20));
    assert_eq!((s[0].pattern.min_sz, s[0].pattern.max_sz), (4096, 2 << 20));
}

#[test]
fn several_schemes_take_their_options_in_order() {
    let s = schemes(
        "--damos_action cold --damos_age 1s max --damos_action collapse --damos_age 0 1s \
         --damos_quota_goal some_mem_psi_us 1ms --damos_quota_goal user_input 100 50 \
         --damos_nr_quota_goals 1 1 --damos_filter allow memcg /a --damos_nr_filters 0 1",
    )
    .unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!((s[0].action, s[1].action), (Action::Cold, Action::Collapse));
    assert_eq!(s[1].pattern.max_age_us, 1_000_000);
    assert_eq!(s[0].quota.goals, vec![Goal::new(Metric::SomeMemPsiUs, 1000, 0)]);
    assert_eq!(s[1].quota.goals, vec![Goal::new(Metric::UserInput, 100, 50)]);
    assert!(s[0].filters.is_empty());
    assert_eq!(s[1].filters[0].kind, FilterKind::Memcg("/a".into()));
}

#[test]
fn damos_json_reads_as_damo_writes_it() {
    let json = r#"[{"access_pattern": {"sz_bytes": {"min": "min", "max": "max"},
        "nr_accesses_unit": "percent", "nr_accesses": {"min": "min", "max": "min"},
        "age_unit": "usec", "age": {"min": "1s", "max": "max"}}, "action": "pageout",
        "quotas": {"time_ms": 10, "sz_bytes": "128 MiB", "reset_interval_ms": 1000,
          "weights": {"sz_permil": 0, "nr_accesses_permil": 0, "age_permil": 1},
          "goals": [{"metric": "some_mem_psi_us", "target_value": 1000, "current_value": 0}]},
        "watermarks": {"metric": "free_mem_rate", "interval_us": 5000000,
          "high_permil": 500, "mid_permil": 400, "low_permil": 200},
        "filters": [{"filter_type": "anon", "matching": true, "allow": false},
          {"filter_type": "addr", "matching": true, "allow": true,
           "address_range": {"start": 4096, "end": 8192}},
          {"filter_type": "hugepage_size", "matching": false, "allow": false,
           "hugepage_size": {"min": "2 MiB", "max": 2097152}}]}]"#;
    let cli = Cli::try_parse_from(["udamon", "--schemes", json]).unwrap();
    let s = cli.schemes.resolve(&Attrs::default()).unwrap();
    let [s] = &s[..] else { panic!("{s:?}") };
    assert_eq!(s.action, Action::Pageout);
    assert_eq!((s.pattern.max_nr_accesses, s.pattern.min_age_us), (0, 1_000_000));
    assert_eq!((s.quota.time_ms, s.quota.sz, s.quota.reset_interval_ms), (10, 128 << 20, 1000));
    assert_eq!(s.quota.goals[0].metric, Metric::SomeMemPsiUs);
    assert_eq!(s.wmarks.low, 200);
    assert_eq!(s.filters[1].kind, FilterKind::Addr(4096, 8192));
    let huge = FilterKind::HugepageSize(2 << 20, 2 << 20);
    assert_eq!(s.filters[2], Filter { kind: huge, matching: false, allow: false });
}

#[test]
fn bad_schemes_are_one_clear_line() {
    for (args, says) in [
        ("--damos_action evict", "unknown action `evict`"),
        ("--damos_action hugepage", "process_madvise does not take MADV_HUGEPAGE"),
        ("--damos_action migrate_cold", "give the node to move pages to"),
        ("--damos_action migrate_cold x", "node `x`"),
        (
            "--damos_action pageout --damos_age 1s 2s --damos_age 1s 2s",
            "2 --damos_age for 1 --damos_action",
        ),
        ("--damos_action pageout --damos_access_rate 0 150%", "give 0 to 100 percent"),
        ("--damos_action pageout --damos_age 2s 1s", "minimum exceeds its maximum"),
        ("--damos_action pageout --damos_filter reject young", "young filter is not supported"),
        ("--damos_action pageout --damos_filter keep anon", "starts with allow or reject"),
        ("--damos_action pageout --damos_filter allow hugepage_size 2M", "lacks its arguments"),
        (
            "--damos_action pageout --damos_filter allow hugepage_size 2M 4K",
            "minimum 2097152 exceeds its maximum 4096",
        ),
        ("--damos_action pageout --damos_quota_goal psi 10", "`psi` with 1 values"),
        ("--damos_action pageout --damos_quota_goal node_mem_free_bp 10 99", "no NUMA node 99"),
        (
            "--damos_action pageout --damos_wmarks free_mem_rate 1s 100 400 200",
            "ordered high >= mid >= low",
        ),
        (
            "--damos_action a --damos_action b --damos_filter reject anon",
            "--damos_nr_filters must give",
        ),
        ("--schemes [{\"action\":1}", "not JSON"),
        ("--schemes /no/such/file", "neither a file nor JSON"),
        ("--damos_action cold --damos_quota_space 1M", "need --damos_quota_interval"),
        ("--damos_action cold --damos_quotas 10 --damos_quota_interval 1s", "not both"),
        ("--damos_action cold --damos_wmarks free_mem_rate 1s 50x 40 20", "not a number of permil"),
        (
            "--schemes [{\"action\":\"cold\",\"access_pattern\":3}]",
            "access_pattern must be an object",
        ),
        ("--damos_age 1s max", "1 --damos_age for 0 --damos_action"),
    ] {
        let err = format!("{:#}", schemes(args).unwrap_err());
        assert!(err.contains(says), "{args}: {err}");
        assert!(!err.contains('\n'), "{args}: one line: {err}");
    }
}
