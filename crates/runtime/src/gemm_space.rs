//! The configuration space of one cuBLASLt GEMM, as `fluxc_autotune`
//! fields.
//!
//! cuBLASLt describes an algorithm by its id (`cublasLtMatmulAlgoGetIds`
//! lists the ids of a type combination) and its configuration attributes
//! (`CUBLASLT_ALGO_CONFIG_*`: tile, stages, split-K, reduction scheme, CTA
//! swizzling, custom option, inner shape, cluster shape); each id's
//! capabilities (`CUBLASLT_ALGO_CAP_*`) say which tiles and stages it has
//! and whether it splits K or swizzles. [`GemmSpace`] turns those into six
//! fields — `algo_id`, `tile`, `stages`, `split_k`, `swizzle`,
//! `cluster_shape` — whose values are the union over the ids, so a
//! configuration may combine an id with a tile it lacks: [`GemmSpace::screen`]
//! rejects such a configuration from the capabilities alone, before
//! anything is built or launched (cuBLASLt's `cublasLtMatmulAlgoCheck`
//! rejects the rest, e.g. cluster shapes, for which there is no capability).
//!
//! The reduction scheme, custom option and inner shape are not searched:
//! with the starting algorithm's id they keep its values (the starting
//! point maps back to exactly the algorithm it came from); with another id
//! they are 0, and a split K takes the first scheme the id supports of
//! compute-type, output-type and in-place reduction.
//!
//! The capabilities come from a [`CapabilitySource`]: cuBLASLt on the GPU
//! (`gemm_algo`), a fake in tests.

use std::collections::BTreeMap;

use fluxc_autotune::{Config, ConfigSpace, Field};

/// The split-K values searched where an algorithm supports splitting K.
pub const SPLIT_K: [u32; 5] = [1, 2, 4, 8, 16];

/// The cluster shapes searched (`cublasLtClusterShape_t`: auto, 1×1×1,
/// 2×1×1, 1×2×1, 2×2×1, 4×1×1, 1×4×1), in the order neighbours are taken.
pub const CLUSTER_SHAPES: [u16; 7] = [0, 2, 3, 5, 6, 4, 8];

/// `cublasLtReductionScheme_t` values, in the order a split K takes them.
const REDUCTION_PREFERENCE: [u32; 3] = [
    2, // CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE
    4, // CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE
    1, // CUBLASLT_REDUCTION_SCHEME_INPLACE
];

/// The field names, in the space's order.
pub const FIELDS: [&str; 6] = [
    "algo_id",
    "tile",
    "stages",
    "split_k",
    "swizzle",
    "cluster_shape",
];

/// An algorithm's configuration attributes (`CUBLASLT_ALGO_CONFIG_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AlgoConfig {
    /// `CUBLASLT_ALGO_CONFIG_ID`.
    pub algo_id: i32,
    /// `CUBLASLT_ALGO_CONFIG_TILE_ID` (a `cublasLtMatmulTile_t`).
    pub tile: u32,
    /// `CUBLASLT_ALGO_CONFIG_STAGES_ID` (a `cublasLtMatmulStages_t`).
    pub stages: u32,
    /// `CUBLASLT_ALGO_CONFIG_SPLITK_NUM`.
    pub split_k: u32,
    /// `CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME` (a `cublasLtReductionScheme_t`).
    pub reduction: u32,
    /// `CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING`.
    pub swizzle: u32,
    /// `CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION`.
    pub custom_option: u32,
    /// `CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID`.
    pub inner_shape: u16,
    /// `CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID` (a `cublasLtClusterShape_t`).
    pub cluster_shape: u16,
}

impl AlgoConfig {
    /// `algo 66 tile 21 stages 8 split_k 1 ...` for reports.
    pub fn describe(&self) -> String {
        format!(
            "algo {} tile {} stages {} split_k {} reduction {} swizzle {} custom {} inner {} cluster {}",
            self.algo_id,
            self.tile,
            self.stages,
            self.split_k,
            self.reduction,
            self.swizzle,
            self.custom_option,
            self.inner_shape,
            self.cluster_shape
        )
    }
}

/// What one algorithm id supports (`CUBLASLT_ALGO_CAP_*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlgoCaps {
    /// `CUBLASLT_ALGO_CAP_TILE_IDS`.
    pub tiles: Vec<u32>,
    /// `CUBLASLT_ALGO_CAP_STAGES_IDS`.
    pub stages: Vec<u32>,
    /// `CUBLASLT_ALGO_CAP_SPLITK_SUPPORT`.
    pub split_k: bool,
    /// `CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK`.
    pub reduction_mask: u32,
    /// `CUBLASLT_ALGO_CAP_CTA_SWIZZLING_SUPPORT`.
    pub swizzle: bool,
}

impl AlgoCaps {
    /// Whether `value` is in `list`; an empty list allows only 0 (the
    /// "undefined" tile or stages: the algorithm does not choose).
    fn allows(list: &[u32], value: u32) -> bool {
        list.contains(&value) || (list.is_empty() && value == 0)
    }

    /// These capabilities widened to allow `c`'s values.
    fn allowing(mut self, c: &AlgoConfig) -> AlgoCaps {
        for (list, value) in [(&mut self.tiles, c.tile), (&mut self.stages, c.stages)] {
            if !list.contains(&value) {
                list.push(value);
                list.sort_unstable();
            }
        }
        self.split_k |= c.split_k > 1;
        self.reduction_mask |= c.reduction;
        self.swizzle |= c.swizzle > 0;
        self
    }
}

/// Where the algorithm ids and their capabilities come from.
pub trait CapabilitySource {
    /// The algorithm ids of the GEMM's types.
    fn algo_ids(&self) -> Result<Vec<i32>, String>;
    /// What algorithm `id` supports.
    fn caps(&self, id: i32) -> Result<AlgoCaps, String>;
}

/// The search space of one GEMM around a starting algorithm.
#[derive(Clone, Debug, PartialEq)]
pub struct GemmSpace {
    space: ConfigSpace,
    caps: BTreeMap<i32, AlgoCaps>,
    start: AlgoConfig,
    /// Ids whose capabilities could not be read, with why.
    pub skipped: Vec<(i32, String)>,
}

/// `values` sorted and deduplicated, as field values.
fn sorted(values: impl IntoIterator<Item = i64>) -> Vec<i64> {
    let mut v: Vec<i64> = values.into_iter().collect();
    v.sort_unstable();
    v.dedup();
    v
}

impl GemmSpace {
    /// The space of the ids `source` lists (the starting algorithm's id
    /// always among them) around `start`, which it contains: its id gets at
    /// least the capabilities its own values need. Ids whose capabilities
    /// cannot be read are left out ([`GemmSpace::skipped`]).
    pub fn new(source: &dyn CapabilitySource, start: &AlgoConfig) -> Result<GemmSpace, String> {
        let mut ids = source.algo_ids()?;
        ids.push(start.algo_id);
        ids.sort_unstable();
        ids.dedup();
        let mut caps = BTreeMap::new();
        let mut skipped = Vec::new();
        for id in ids {
            match source.caps(id) {
                Ok(c) => {
                    caps.insert(id, c);
                }
                Err(why) if id != start.algo_id => skipped.push((id, why)),
                Err(_) => {
                    caps.insert(id, AlgoCaps::default());
                }
            }
        }
        if let Some(c) = caps.remove(&start.algo_id) {
            caps.insert(start.algo_id, c.allowing(start));
        }
        let all = || caps.values();
        let any_split = all().any(|c| c.split_k);
        let any_swizzle = all().any(|c| c.swizzle);
        let mut clusters: Vec<i64> = CLUSTER_SHAPES.iter().map(|&c| i64::from(c)).collect();
        if !clusters.contains(&i64::from(start.cluster_shape)) {
            clusters.push(i64::from(start.cluster_shape));
        }
        let split: Vec<u32> = if any_split { SPLIT_K.to_vec() } else { vec![1] };
        let fields = vec![
            Field::new(FIELDS[0], sorted(caps.keys().map(|&id| i64::from(id)))),
            Field::new(
                FIELDS[1],
                sorted(all().flat_map(|c| c.tiles.iter().map(|&t| i64::from(t)))),
            ),
            Field::new(
                FIELDS[2],
                sorted(all().flat_map(|c| c.stages.iter().map(|&s| i64::from(s)))),
            ),
            Field::new(
                FIELDS[3],
                sorted(split.into_iter().chain([start.split_k]).map(i64::from)),
            ),
            Field::new(
                FIELDS[4],
                sorted([0, i64::from(any_swizzle), i64::from(start.swizzle)]),
            ),
            Field::new(FIELDS[5], clusters),
        ];
        let space = GemmSpace {
            space: ConfigSpace::new(fields),
            caps,
            start: *start,
            skipped,
        };
        match space.config_of(start) {
            Some(_) => Ok(space),
            None => Err(format!(
                "the starting algorithm ({}) is outside its own space",
                start.describe()
            )),
        }
    }

    /// The `fluxc_autotune` space.
    pub fn space(&self) -> &ConfigSpace {
        &self.space
    }

    /// The starting algorithm.
    pub fn start(&self) -> &AlgoConfig {
        &self.start
    }

    /// The starting configuration (in the space by construction).
    pub fn start_config(&self) -> Config {
        self.config_of(&self.start)
            .unwrap_or_else(|| Config(vec![0; FIELDS.len()]))
    }

    /// The configuration of `a`, if its searched values are in the space.
    pub fn config_of(&self, a: &AlgoConfig) -> Option<Config> {
        self.space.config_of(&[
            i64::from(a.algo_id),
            i64::from(a.tile),
            i64::from(a.stages),
            i64::from(a.split_k),
            i64::from(a.swizzle),
            i64::from(a.cluster_shape),
        ])
    }

    /// The algorithm configuration `c` stands for (see the module docs for
    /// the attributes that are not searched).
    pub fn algo_config(&self, c: &Config) -> AlgoConfig {
        let v = self.space.values(c);
        // Every value came from an i32 or unsigned attribute.
        let (algo_id, tile, stages, split_k, swizzle, cluster_shape) = (
            v[0] as i32,
            v[1] as u32,
            v[2] as u32,
            v[3] as u32,
            v[4] as u32,
            v[5] as u16,
        );
        let same_algo = algo_id == self.start.algo_id;
        let reduction = if same_algo && split_k == self.start.split_k {
            self.start.reduction
        } else if split_k <= 1 {
            0
        } else {
            let mask = self.caps.get(&algo_id).map_or(0, |c| c.reduction_mask);
            REDUCTION_PREFERENCE
                .into_iter()
                .find(|r| mask & r != 0)
                .unwrap_or(0)
        };
        AlgoConfig {
            algo_id,
            tile,
            stages,
            split_k,
            reduction,
            swizzle,
            custom_option: if same_algo {
                self.start.custom_option
            } else {
                0
            },
            inner_shape: if same_algo { self.start.inner_shape } else { 0 },
            cluster_shape,
        }
    }

    /// Rejects `a` when its id's capabilities rule it out.
    pub fn screen(&self, a: &AlgoConfig) -> Result<(), String> {
        let id = a.algo_id;
        let caps = self
            .caps
            .get(&id)
            .ok_or_else(|| format!("algorithm {id} has no known capabilities"))?;
        if !AlgoCaps::allows(&caps.tiles, a.tile) {
            return Err(format!("algorithm {id} has no tile {}", a.tile));
        }
        if !AlgoCaps::allows(&caps.stages, a.stages) {
            return Err(format!("algorithm {id} has no stages {}", a.stages));
        }
        if a.split_k > 1 && !caps.split_k {
            return Err(format!("algorithm {id} does not split K"));
        }
        if a.split_k > 1 && a.reduction & caps.reduction_mask == 0 {
            return Err(format!(
                "algorithm {id} has no reduction scheme for a split K"
            ));
        }
        if a.swizzle > 0 && !caps.swizzle {
            return Err(format!("algorithm {id} does not swizzle CTAs"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two algorithms: 6 (tiles 10, 20; stages 1, 2; split K with
    /// compute-type reduction; swizzles) and 21 (tile 30, stages 3; neither),
    /// and 40, whose capabilities cannot be read.
    struct Fake;

    impl CapabilitySource for Fake {
        fn algo_ids(&self) -> Result<Vec<i32>, String> {
            Ok(vec![21, 6, 40])
        }
        fn caps(&self, id: i32) -> Result<AlgoCaps, String> {
            match id {
                6 => Ok(AlgoCaps {
                    tiles: vec![20, 10],
                    stages: vec![1, 2],
                    split_k: true,
                    reduction_mask: 2 | 4,
                    swizzle: true,
                }),
                21 => Ok(AlgoCaps {
                    tiles: vec![30],
                    stages: vec![3],
                    split_k: false,
                    reduction_mask: 0,
                    swizzle: false,
                }),
                _ => Err("CUBLAS_STATUS_NOT_SUPPORTED".into()),
            }
        }
    }

    fn start() -> AlgoConfig {
        AlgoConfig {
            algo_id: 6,
            tile: 20,
            stages: 2,
            split_k: 1,
            reduction: 0,
            swizzle: 1,
            custom_option: 3,
            inner_shape: 4,
            cluster_shape: 3,
        }
    }

    fn values(s: &GemmSpace, name: &str) -> Vec<i64> {
        s.space()
            .fields
            .iter()
            .find(|f| f.name == name)
            .unwrap()
            .values
            .clone()
    }

    #[test]
    fn fields_are_the_union_of_the_capabilities() {
        let s = GemmSpace::new(&Fake, &start()).unwrap();
        let names: Vec<&str> = s.space().fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, FIELDS);
        assert_eq!(values(&s, "algo_id"), vec![6, 21]);
        assert_eq!(values(&s, "tile"), vec![10, 20, 30]);
        assert_eq!(values(&s, "stages"), vec![1, 2, 3]);
        assert_eq!(values(&s, "split_k"), vec![1, 2, 4, 8, 16]);
        assert_eq!(values(&s, "swizzle"), vec![0, 1]);
        assert_eq!(values(&s, "cluster_shape"), vec![0, 2, 3, 5, 6, 4, 8]);
        assert_eq!(s.skipped.len(), 1);
        assert_eq!(s.skipped[0].0, 40);
    }

    #[test]
    fn the_start_maps_back_to_itself() {
        let s = GemmSpace::new(&Fake, &start()).unwrap();
        let c = s.start_config();
        assert_eq!(s.algo_config(&c), start());
        assert_eq!(
            s.space().describe(&c),
            "algo_id=6 tile=20 stages=2 split_k=1 swizzle=1 cluster_shape=3"
        );
        assert_eq!(s.screen(&start()), Ok(()));
    }

    #[test]
    fn a_start_outside_the_capabilities_widens_its_algorithm() {
        // The heuristic's algorithm uses a tile, split K and cluster shape
        // its capabilities did not list, and an id GetIds did not return.
        let odd = AlgoConfig {
            tile: 99,
            split_k: 3,
            reduction: 1,
            cluster_shape: 17,
            ..start()
        };
        let s = GemmSpace::new(&Fake, &odd).unwrap();
        assert_eq!(values(&s, "tile"), vec![10, 20, 30, 99]);
        assert_eq!(values(&s, "split_k"), vec![1, 2, 3, 4, 8, 16]);
        assert_eq!(*values(&s, "cluster_shape").last().unwrap(), 17);
        assert_eq!(s.algo_config(&s.start_config()), odd);
        assert_eq!(s.screen(&odd), Ok(()));

        let unknown = AlgoConfig {
            algo_id: 40,
            ..start()
        };
        let s = GemmSpace::new(&Fake, &unknown).unwrap();
        assert_eq!(values(&s, "algo_id"), vec![6, 21, 40]);
        assert_eq!(s.screen(&unknown), Ok(()), "its own values are allowed");
    }

    #[test]
    fn other_algorithms_take_no_options_of_the_start() {
        let s = GemmSpace::new(&Fake, &start()).unwrap();
        let c = s
            .config_of(&AlgoConfig {
                algo_id: 21,
                tile: 30,
                stages: 3,
                split_k: 1,
                swizzle: 0,
                cluster_shape: 0,
                ..AlgoConfig::default()
            })
            .unwrap();
        let a = s.algo_config(&c);
        assert_eq!((a.custom_option, a.inner_shape, a.reduction), (0, 0, 0));
        assert_eq!(s.screen(&a), Ok(()));
    }

    #[test]
    fn split_k_takes_a_supported_reduction_scheme() {
        let s = GemmSpace::new(&Fake, &start()).unwrap();
        let mut c = s.start_config();
        c.0[3] = 2; // split_k = 4
        let a = s.algo_config(&c);
        assert_eq!((a.split_k, a.reduction), (4, 2), "compute-type first");
        assert_eq!(s.screen(&a), Ok(()));
        assert_eq!(a.custom_option, 3, "same algorithm: its options stay");
    }

    #[test]
    fn unsupported_combinations_are_screened_out() {
        let s = GemmSpace::new(&Fake, &start()).unwrap();
        let with = |f: &dyn Fn(&mut AlgoConfig)| {
            let mut a = start();
            f(&mut a);
            s.screen(&a).unwrap_err()
        };
        assert!(with(&|a| a.tile = 30).contains("no tile 30"));
        assert!(with(&|a| a.stages = 3).contains("no stages 3"));
        assert!(with(&|a| a.algo_id = 40).contains("no known capabilities"));
        let on_21 = |a: &mut AlgoConfig| {
            a.algo_id = 21;
            a.tile = 30;
            a.stages = 3;
            a.swizzle = 0;
        };
        assert!(with(&|a| {
            on_21(a);
            a.split_k = 2;
            a.reduction = 2;
        })
        .contains("does not split K"));
        assert!(with(&|a| {
            on_21(a);
            a.swizzle = 1;
        })
        .contains("does not swizzle"));
        assert!(with(&|a| {
            a.split_k = 2;
            a.reduction = 1;
        })
        .contains("no reduction scheme"));
    }

    #[test]
    fn without_split_k_or_swizzling_those_fields_stay_put() {
        struct Plain;
        impl CapabilitySource for Plain {
            fn algo_ids(&self) -> Result<Vec<i32>, String> {
                Ok(vec![1])
            }
            fn caps(&self, _: i32) -> Result<AlgoCaps, String> {
                Ok(AlgoCaps {
                    tiles: vec![5],
                    stages: vec![],
                    ..AlgoCaps::default()
                })
            }
        }
        let start = AlgoConfig {
            algo_id: 1,
            tile: 5,
            split_k: 1,
            ..AlgoConfig::default()
        };
        let s = GemmSpace::new(&Plain, &start).unwrap();
        assert_eq!(values(&s, "split_k"), vec![1]);
        assert_eq!(values(&s, "swizzle"), vec![0]);
        assert_eq!(values(&s, "stages"), vec![0], "undefined stages");
        assert_eq!(s.screen(&start), Ok(()));
    }
}
