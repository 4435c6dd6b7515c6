//! Splitting an attention step's last wave of query tiles over their keys.
//!
//! The tensor-core attention kernels (bf16 and fp8) run one CTA per (query
//! tile, head, batch) and one CTA per SM (their shared memory), so CTAs go
//! in waves of as many as the GPU has SMs. When their count is not a
//! multiple of that, the last wave leaves SMs idle: at FLUX's 4352 tokens,
//! 816 CTAs on the H200's 132 SMs are 6 full waves and a wave of 24. A
//! kernel with an [`AttentionSplit`](fluxc_artifact::AttentionSplit) lets
//! the runtime run the full waves as compiled, the query tiles of the last
//! wave as `segments` key ranges each (a last wave of 120 CTAs a fifth as
//! long), and a merge of each row's segments: bf16 389 → 366 µs and fp8
//! 243 → 230 µs at 4352 tokens on the H200
//! (`benches/results/2026-11-29_attention_tail_split.log`,
//! `2026-11-29_ce1bee7_attention.md`). At FLUX's 4608 tokens (72 CTAs in
//! the last wave, 3 tiles of each head) 132 SMs hold no two segments of
//! each tile, and nothing is split.
//!
//! How to split depends on the device's SM count, so the runtime plans it
//! at load ([`plan`]); the partial results go to one workspace that every
//! split attention shares (the steps run in order on one stream).

use fluxc_artifact::{Attention, AttentionOperands, Step, SPLIT_MERGE_ROWS};

use crate::plan::Param;

/// How one attention step runs split: its last `tiles` query tiles of every
/// (head, batch), each as `segments` key ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SplitPlan {
    /// Query tiles split (the last ones).
    pub tiles: u32,
    /// Key segments per split tile.
    pub segments: u32,
}

/// Which SM count attention splits are planned for
/// ([`LoadOptions::attention_split`](crate::LoadOptions::attention_split)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionSplitPolicy {
    /// The device's (default).
    #[default]
    Auto,
    /// None: every query tile runs whole, as compiled.
    Off,
    /// This many, whatever the device has (tests use it to split small
    /// problems; the result is the same, only the speed differs).
    ForSms(u32),
}

impl AttentionSplitPolicy {
    /// The SM count to plan for on a device with `device_sms`, or `None`
    /// for no splits.
    pub(crate) fn sms(self, device_sms: u32) -> Option<u32> {
        match self {
            AttentionSplitPolicy::Auto => Some(device_sms),
            AttentionSplitPolicy::Off => None,
            AttentionSplitPolicy::ForSms(n) => Some(n),
        }
    }
}

/// Query and key rows per tile of a tensor-map attention kernel, the ones
/// that can split.
fn tile_rows(operands: AttentionOperands) -> Option<(u32, u32)> {
    match operands {
        AttentionOperands::TensorMaps { q_rows, kv_rows }
        | AttentionOperands::Fp8TensorMaps {
            q_rows, kv_rows, ..
        } => Some((q_rows, kv_rows)),
        AttentionOperands::Pointers => None,
    }
}

/// The split of `a` for a GPU of `sms` SMs that fills the last wave best,
/// or `None` when the whole-tile grid is as good (its waves are full, the
/// kernel cannot split, or the last wave's tiles cannot be split in two).
///
/// With `c` the fewest query tiles per (head, batch) whose CTAs cover the
/// last wave, each is split into as many segments `k` as the SMs hold
/// (`c · k · heads · batch ≤ sms`), at most one per key tile.
pub(crate) fn plan(a: &Attention, sms: u32) -> Option<SplitPlan> {
    let (_, kv_rows) = tile_rows(a.operands)?;
    a.split.as_ref()?;
    let q_tiles = u64::from(a.grid[0]);
    let per_tile = u64::from(a.grid[1]) * u64::from(a.grid[2]);
    let sms = u64::from(sms);
    let key_tiles = u64::from(a.seq_kv.div_ceil(kv_rows.max(1)));
    if sms == 0 || per_tile == 0 {
        return None;
    }
    let last_wave = (q_tiles * per_tile) % sms;
    if last_wave == 0 {
        return None;
    }
    let tiles = last_wave.div_ceil(per_tile).min(q_tiles);
    let segments = (sms / (tiles * per_tile)).min(key_tiles);
    (segments >= 2).then_some(SplitPlan {
        tiles: tiles as u32,
        segments: segments as u32,
    })
}

/// How each of `steps` splits (attention steps whose kernel can, when
/// that fills a GPU of `sms` SMs better; `sms` `None`: no splits), one
/// entry per step.
pub(crate) fn plan_steps(steps: &[Step], sms: Option<u32>) -> Vec<Option<SplitPlan>> {
    steps
        .iter()
        .map(|step| match (step, sms) {
            (Step::Attention(a), Some(sms)) => plan(a, sms),
            _ => None,
        })
        .collect()
}

/// Bytes of the workspace the splits `plans` of `steps` share (they run
/// one after another): the largest one's partial results.
pub(crate) fn shared_workspace_bytes(steps: &[Step], plans: &[Option<SplitPlan>]) -> u64 {
    steps
        .iter()
        .zip(plans)
        .filter_map(|(step, plan)| match (step, plan) {
            (Step::Attention(a), Some(p)) => Some(workspace_bytes(a, *p)),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// Bytes of the partial results of `a` split by `plan`.
fn workspace_bytes(a: &Attention, plan: SplitPlan) -> u64 {
    let floats = a.split.as_ref().map_or(0, |s| u64::from(s.part_floats));
    u64::from(plan.tiles)
        * u64::from(plan.segments)
        * u64::from(a.grid[1])
        * u64::from(a.grid[2])
        * floats
        * 4
}

/// One kernel launch of a split attention.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SplitLaunch {
    /// The `extern "C"` kernel.
    pub kernel: String,
    /// Grid.
    pub grid: [u32; 3],
    /// Block.
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes.
    pub shared_bytes: u32,
    /// Parameters, in order.
    pub params: Vec<Param>,
}

/// The launches of `a` split by `plan` (a plan of [`plan`], so `a` has an
/// [`AttentionSplit`](fluxc_artifact::AttentionSplit)), in order: the
/// whole-tile kernel on the query tiles before the split ones (none when
/// every tile is split), the part kernel, the merge. `whole` is the
/// whole-tile launch's parameters (`q, k, v, out`, an fp8 kernel's three
/// scale pointers, `seq_q, seq_kv, heads, scale`), `workspace` the device
/// address of the partial results.
pub(crate) fn launches(
    a: &Attention,
    plan: SplitPlan,
    whole: &[Param],
    workspace: u64,
) -> Result<Vec<SplitLaunch>, String> {
    let split = a
        .split
        .as_ref()
        .ok_or_else(|| format!("kernel `{}` has no split entry points", a.kernel))?;
    let (q_rows, _) = tile_rows(a.operands).ok_or("only tensor-map attention kernels split")?;
    let expected = if a.scales.is_some() { 11 } else { 8 };
    if whole.len() != expected {
        return Err(format!(
            "the whole-tile launch has {} parameters, not {expected}",
            whole.len()
        ));
    }
    let (out, seq_q, heads) = (whole[3], whole[expected - 4], whole[expected - 2]);
    let base = a.grid[0] - plan.tiles;
    let as_int = |v: u32| i32::try_from(v).map_err(|_| format!("{v} does not fit an int"));
    let (q_tile_base, kv_splits) = (
        Param::I32(as_int(base)?),
        Param::I32(as_int(plan.segments)?),
    );
    let mut out_launches = Vec::with_capacity(3);
    if base > 0 {
        out_launches.push(SplitLaunch {
            kernel: a.kernel.clone(),
            grid: [base, a.grid[1], a.grid[2]],
            block: a.block,
            shared_bytes: a.shared_bytes,
            params: whole.to_vec(),
        });
    }
    // The whole-tile parameters with the workspace in place of out and the
    // split's two after them.
    let mut part_params = whole.to_vec();
    part_params[3] = Param::Ptr(workspace);
    part_params.extend([q_tile_base, kv_splits]);
    out_launches.push(SplitLaunch {
        kernel: split.part_kernel.clone(),
        grid: [plan.tiles * plan.segments, a.grid[1], a.grid[2]],
        block: a.block,
        shared_bytes: a.shared_bytes,
        params: part_params,
    });
    out_launches.push(SplitLaunch {
        kernel: split.merge_kernel.clone(),
        grid: [plan.tiles * q_rows / SPLIT_MERGE_ROWS, a.grid[1], a.grid[2]],
        block: [32 * SPLIT_MERGE_ROWS, 1, 1],
        shared_bytes: 0,
        params: vec![
            Param::Ptr(workspace),
            out,
            seq_q,
            heads,
            q_tile_base,
            kv_splits,
        ],
    });
    Ok(out_launches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxc_artifact::{AttentionSplit, Tensor};

    /// The bf16 kernel's attention over `[batch, seq, heads, 128]`, 192-key
    /// tiles.
    fn attention(batch: u32, heads: u32, seq_q: u32, seq_kv: u32) -> Attention {
        Attention {
            kernel: "attention_d128_bf16".into(),
            operands: AttentionOperands::TensorMaps {
                q_rows: 128,
                kv_rows: 192,
            },
            grid: [seq_q.div_ceil(128), heads, batch],
            block: [384, 1, 1],
            shared_bytes: 230_472,
            q: Tensor::of(0),
            k: Tensor::of(1),
            v: Tensor::of(2),
            out: Tensor::of(3),
            batch,
            heads,
            seq_q,
            seq_kv,
            head_dim: 128,
            scale: 0.088_388_35,
            scales: None,
            split: Some(AttentionSplit {
                part_kernel: "attention_d128_bf16_part".into(),
                merge_kernel: "attention_d128_bf16_merge".into(),
                part_floats: 128 * 130,
            }),
        }
    }

    fn split(tiles: u32, segments: u32) -> Option<SplitPlan> {
        Some(SplitPlan { tiles, segments })
    }

    /// The merge's parameters for the 4352-token problems below: workspace
    /// 99, out 4, tiles from 33 on, 5 segments.
    fn merge_params_4352() -> [Param; 6] {
        [
            Param::Ptr(99),
            Param::Ptr(4),
            Param::I32(4352),
            Param::I32(24),
            Param::I32(33),
            Param::I32(5),
        ]
    }

    #[test]
    fn the_last_wave_is_split_to_fill_the_sms() {
        // FLUX at 256 text tokens: 34 tiles × 24 heads = 6 waves of 132 and
        // 24 CTAs; the last tile of every head as 5 segments fills 120 SMs.
        assert_eq!(plan(&attention(1, 24, 4352, 4352), 132), split(1, 5));
        // At 512 text tokens the last wave is 72 CTAs, 3 tiles a head:
        // 132 SMs hold no two segments of each.
        assert_eq!(plan(&attention(1, 24, 4608, 4608), 132), None);
        // Full waves: nothing to fill.
        assert_eq!(plan(&attention(1, 24, 128 * 11, 4608), 132), None);
        // A grid smaller than one wave is all last wave: every tile split,
        // at most into one segment per key tile (300 keys: 2 of 192).
        assert_eq!(plan(&attention(1, 2, 300, 300), 132), split(3, 2));
        assert_eq!(plan(&attention(1, 2, 300, 4000), 132), split(3, 21));
        // One key tile cannot be split.
        assert_eq!(plan(&attention(1, 2, 300, 192), 132), None);
        // Batches count like heads; fewer SMs, fewer segments.
        assert_eq!(plan(&attention(2, 24, 4352, 4352), 114), split(1, 2));
        assert_eq!(plan(&attention(1, 24, 4352, 4352), 0), None);
    }

    #[test]
    fn steps_are_planned_one_by_one_and_share_the_largest_workspace() {
        let steps = [
            Step::Attention(attention(1, 24, 4352, 4352)),
            Step::Attention(attention(1, 24, 4608, 4608)),
            Step::Attention(attention(1, 2, 300, 300)),
        ];
        let plans = plan_steps(&steps, Some(132));
        assert_eq!(plans, [split(1, 5), None, split(3, 2)]);
        // The 4352-token step's 120 part CTAs, not the small one's 12.
        assert_eq!(
            shared_workspace_bytes(&steps, &plans),
            5 * 24 * 128 * 130 * 4
        );
        assert_eq!(plan_steps(&steps, None), [None, None, None]);
        assert_eq!(shared_workspace_bytes(&steps, &[None, None, None]), 0);
    }

    #[test]
    fn kernels_without_split_entry_points_are_not_split() {
        let a = Attention {
            split: None,
            ..attention(1, 24, 4352, 4352)
        };
        assert_eq!(plan(&a, 132), None);
        assert!(launches(
            &a,
            SplitPlan {
                tiles: 1,
                segments: 5
            },
            &[],
            0
        )
        .is_err());
    }

    #[test]
    fn launches_cover_every_tile_once_with_the_kernels_abi() {
        let a = attention(1, 24, 4352, 4352);
        let p = plan(&a, 132).unwrap();
        assert_eq!(workspace_bytes(&a, p), 5 * 24 * 128 * 130 * 4);
        let whole = [
            Param::Ptr(1),
            Param::Ptr(2),
            Param::Ptr(3),
            Param::Ptr(4),
            Param::I32(4352),
            Param::I32(4352),
            Param::I32(24),
            Param::F32(0.5),
        ];
        let l = launches(&a, p, &whole, 99).unwrap();
        let shapes: Vec<(&str, [u32; 3], [u32; 3])> = l
            .iter()
            .map(|l| (l.kernel.as_str(), l.grid, l.block))
            .collect();
        assert_eq!(
            shapes,
            [
                ("attention_d128_bf16", [33, 24, 1], [384, 1, 1]),
                ("attention_d128_bf16_part", [5, 24, 1], [384, 1, 1]),
                ("attention_d128_bf16_merge", [32, 24, 1], [128, 1, 1]),
            ]
        );
        assert_eq!(l[0].params, whole);
        assert_eq!((l[1].shared_bytes, l[2].shared_bytes), (a.shared_bytes, 0));
        assert_eq!(
            l[1].params,
            [
                Param::Ptr(1),
                Param::Ptr(2),
                Param::Ptr(3),
                Param::Ptr(99),
                Param::I32(4352),
                Param::I32(4352),
                Param::I32(24),
                Param::F32(0.5),
                Param::I32(33),
                Param::I32(5),
            ]
        );
        assert_eq!(l[2].params, merge_params_4352());
        // Every tile split: no whole-tile launch.
        let small = attention(1, 2, 300, 300);
        let l = launches(&small, plan(&small, 132).unwrap(), &whole, 99).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].grid, l[1].grid), ([6, 2, 1], [96, 2, 1]));
        // A parameter list of another kernel is refused.
        assert!(launches(&a, p, &whole[..7], 99).is_err());
    }

    #[test]
    fn fp8_launches_keep_the_scales() {
        // The fp8 kernel: 256-key tiles (4352 keys: 17), three scale
        // pointers after out.
        let a = Attention {
            kernel: "attention_fp8_d128".into(),
            operands: AttentionOperands::Fp8TensorMaps {
                q_rows: 128,
                kv_rows: 256,
                vt_rows: 128,
                vt_keys: 4352,
            },
            scales: Some(fluxc_artifact::AttentionScales {
                q: Tensor::of(4),
                k: Tensor::of(5),
                v: Tensor::of(6),
            }),
            split: Some(AttentionSplit {
                part_kernel: "attention_fp8_d128_part".into(),
                merge_kernel: "attention_fp8_d128_merge".into(),
                part_floats: 128 * 130,
            }),
            ..attention(1, 24, 4352, 4352)
        };
        let p = plan(&a, 132).unwrap();
        assert_eq!(
            p,
            SplitPlan {
                tiles: 1,
                segments: 5
            }
        );
        let whole: Vec<Param> = (1..=7)
            .map(Param::Ptr)
            .chain([
                Param::I32(4352),
                Param::I32(4352),
                Param::I32(24),
                Param::F32(0.5),
            ])
            .collect();
        assert!(launches(&a, p, &whole[..8], 99).is_err());
        let l = launches(&a, p, &whole, 99).unwrap();
        let mut part = whole.clone();
        part[3] = Param::Ptr(99);
        part.extend([Param::I32(33), Param::I32(5)]);
        assert_eq!(l[0].params, whole);
        assert_eq!(l[1].params, part);
        assert_eq!(l[2].params, merge_params_4352());
    }
}
