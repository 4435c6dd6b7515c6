//! Host checks of a pipeline directory before any GPU work: that the
//! transformer's, the VAE's (and the conditioning's) artifacts take and give
//! exactly the tensors `pipeline.json` drives them with (names, shapes,
//! dtypes), and nothing else.

use fluxc_artifact::{Buffer, ElemType, PipelineSpec};

use crate::{Artifact, RuntimeError};

/// The buffer of binding `name` of `artifact` (`kind` is `input` or
/// `output`), checked to have `shape` and, if given, `dtype`.
fn binding<'a>(
    artifact: &'a Artifact,
    kind: &str,
    name: &str,
    shape: &[u64],
    dtype: Option<ElemType>,
) -> Result<&'a Buffer, String> {
    let list = if kind == "input" {
        &artifact.schedule.inputs
    } else {
        &artifact.schedule.outputs
    };
    let found = list
        .iter()
        .find(|b| b.name == name)
        .ok_or_else(|| format!("has no {kind} `{name}`"))?;
    let buffer = artifact
        .buffer(found.buffer)
        .ok_or_else(|| format!("{kind} `{name}` names no buffer"))?;
    if buffer.shape != shape {
        return Err(format!(
            "{kind} `{name}` has shape {:?}, the pipeline needs {shape:?}",
            buffer.shape
        ));
    }
    if let Some(d) = dtype {
        if buffer.dtype != d {
            return Err(format!(
                "{kind} `{name}` is {:?}, the pipeline keeps its latents in {d:?}",
                buffer.dtype
            ));
        }
    }
    if !matches!(buffer.dtype, ElemType::F32 | ElemType::Bf16 | ElemType::F16) {
        return Err(format!(
            "{kind} `{name}` is {:?}, not a float",
            buffer.dtype
        ));
    }
    Ok(buffer)
}

/// Fails unless `artifact` has exactly the inputs `expected`.
fn only_inputs(artifact: &Artifact, expected: &[&str]) -> Result<(), String> {
    if let Some(extra) = artifact
        .schedule
        .inputs
        .iter()
        .find(|b| !expected.contains(&b.name.as_str()))
    {
        return Err(format!(
            "has input `{}`, which the pipeline does not set",
            extra.name
        ));
    }
    Ok(())
}

/// Checks the artifacts against `spec` (`conditioning` is present exactly
/// when the spec hoists it: the caller loads it then).
pub(crate) fn check_artifacts(
    spec: &PipelineSpec,
    transformer: &Artifact,
    vae: &Artifact,
    conditioning: Option<&Artifact>,
) -> Result<(), RuntimeError> {
    let l = &spec.latent;
    let packed = l.packed();
    let latent = Some(spec.latent_dtype);
    let t = &spec.transformer;
    let invalid = |artifact: &Artifact, reason: String| RuntimeError::InvalidArtifact {
        dir: artifact.dir.clone(),
        reason: format!("for pipeline `{}`: {reason}", spec.name),
    };
    // The timestep, guidance and pooled inputs: the conditioning's, for
    // every step at once, or the transformer's.
    let conditioned = |artifact: &Artifact, rows: u64| -> Result<Vec<String>, String> {
        binding(
            artifact,
            "input",
            &t.pooled_projections,
            &[l.batch, spec.pooled_projection_dim],
            None,
        )?;
        binding(artifact, "input", &t.timestep, &[rows], None)?;
        if let Some(g) = &t.guidance {
            binding(artifact, "input", g, &[rows], None)?;
        }
        let mut names = vec![t.pooled_projections.clone(), t.timestep.clone()];
        names.extend(t.guidance.clone());
        Ok(names)
    };
    let hoisted = match (&spec.conditioning, conditioning) {
        (Some(c), Some(artifact)) => {
            let rows = l.batch * u64::from(spec.steps);
            let check = || -> Result<ElemType, String> {
                let names = conditioned(artifact, rows)?;
                let out = binding(artifact, "output", &c.output, &[rows, c.width], None)?;
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                only_inputs(artifact, &names)?;
                Ok(out.dtype)
            };
            let dtype = check().map_err(|r| invalid(artifact, format!("the conditioning {r}")))?;
            Some((c, dtype))
        }
        (None, None) => None,
        _ => {
            return Err(invalid(
                transformer,
                "the pipeline's conditioning artifact and its spec disagree".into(),
            ))
        }
    };
    let check_transformer = || -> Result<(), String> {
        let tokens = l.tokens();
        binding(transformer, "input", &t.hidden_states, &packed, latent)?;
        binding(
            transformer,
            "input",
            &t.encoder_hidden_states,
            &[l.batch, spec.text_tokens, spec.joint_attention_dim],
            None,
        )?;
        let conditioning_names = match hoisted {
            Some((c, dtype)) => {
                let input = binding(
                    transformer,
                    "input",
                    &c.modulation,
                    &[l.batch, c.width],
                    None,
                )?;
                if input.dtype != dtype {
                    return Err(format!(
                        "input `{}` is {:?}, the conditioning's output {dtype:?}",
                        c.modulation, input.dtype
                    ));
                }
                vec![c.modulation.clone()]
            }
            None => conditioned(transformer, l.batch)?,
        };
        binding(transformer, "input", &t.img_ids, &[tokens, 3], None)?;
        binding(
            transformer,
            "input",
            &t.txt_ids,
            &[spec.text_tokens, 3],
            None,
        )?;
        binding(transformer, "output", &t.output, &packed, latent)?;
        let mut names = vec![
            t.hidden_states.as_str(),
            &t.encoder_hidden_states,
            &t.img_ids,
            &t.txt_ids,
        ];
        names.extend(conditioning_names.iter().map(String::as_str));
        only_inputs(transformer, &names)
    };
    check_transformer().map_err(|r| invalid(transformer, format!("the transformer {r}")))?;
    let check_vae = || -> Result<(), String> {
        binding(
            vae,
            "input",
            &spec.vae.latents,
            &[l.batch, l.height, l.width, l.channels],
            latent,
        )?;
        binding(
            vae,
            "output",
            &spec.vae.output,
            &[l.batch, spec.image[0], spec.image[1], spec.image[2]],
            None,
        )?;
        only_inputs(vae, &[spec.vae.latents.as_str()])
    };
    check_vae().map_err(|r| invalid(vae, format!("the VAE decoder {r}")))?;
    for other in std::iter::once(vae).chain(conditioning) {
        if transformer.manifest.arch != other.manifest.arch {
            return Err(invalid(
                other,
                format!(
                    "compiled for {}, the transformer for {}",
                    other.manifest.arch, transformer.manifest.arch
                ),
            ));
        }
    }
    Ok(())
}
