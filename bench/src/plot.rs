//! SVG plots: throughput against streams and against chunk size, per transport/direction and
//! dataset, with the baselines drawn as dashed horizontal lines.
//!
//! Uses plotters' SVG backend only (no bitmap backend, no `ttf`): text goes into `<text>`
//! elements that the viewer renders, so nothing here needs fontconfig, freetype or any font
//! file. X positions are categorical (1, 2, 4, 8 streams sit at equal spacing).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use plotters::prelude::*;

use crate::record::{CellKey, CellSummary};
use crate::units::size_label;

const SIZE_PX: (u32, u32) = (960, 600);

/// One line on a plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    /// (x category index, Gb/s).
    pub points: Vec<(usize, f64)>,
}

/// One plot, ready to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotSpec {
    pub file_name: String,
    pub title: String,
    pub x_desc: String,
    pub x_labels: Vec<String>,
    pub series: Vec<Series>,
    /// (name, Gb/s) drawn as horizontal dashed lines.
    pub baselines: Vec<(String, f64)>,
}

fn file_part(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect()
}

/// Baselines that belong on a plot of `mode` (`tcp push`, `local`, …) for `dataset`: the
/// dataset's copy tools (rsync only in the same direction; cp and tar only against local)
/// and, for remote transports, the best link rate of each link tool.
fn baselines_for(
    cells: &[CellSummary],
    transport: &str,
    direction: Option<&str>,
    dataset: &str,
) -> Vec<(String, f64)> {
    let mut best: BTreeMap<String, f64> = BTreeMap::new();
    for c in cells.iter().filter(|c| !c.key.is_blit()) {
        let Some(g) = c.throughput_median_gbps else { continue };
        let fits = match c.key.dataset.as_deref() {
            Some(d) if d == dataset => {
                if c.key.transport == "local" {
                    transport == "local"
                } else {
                    transport != "local" && c.key.direction.as_deref() == direction
                }
            }
            Some(_) => false,
            None => c.key.transport == transport,
        };
        if !fits {
            continue;
        }
        let mut name = c.key.tool.clone();
        if c.key.dataset.is_some() {
            if let Some(d) = &c.key.direction {
                name.push_str(&format!(" {d}"));
            }
        } else if c.key.streams.is_some() {
            // Link tools ran at several stream counts: keep each tool's best.
            name.push_str(" (best)");
        }
        let e = best.entry(name).or_insert(g);
        *e = e.max(g);
    }
    best.into_iter().collect()
}

/// Builds the plot specs for every (transport/direction, dataset) that has blit results.
pub fn plan(cells: &[CellSummary]) -> Vec<PlotSpec> {
    let blit: Vec<&CellSummary> = cells.iter().filter(|c| c.key.is_blit()).collect();
    let mut groups: BTreeMap<(String, Option<String>, String), Vec<&CellSummary>> = BTreeMap::new();
    for c in &blit {
        let Some(ds) = c.key.dataset.clone() else { continue };
        groups.entry((c.key.transport.clone(), c.key.direction.clone(), ds)).or_default().push(c);
    }
    let mut out = Vec::new();
    for ((transport, direction, dataset), group) in groups {
        let mode = CellKey {
            direction: direction.clone(),
            transport: transport.clone(),
            ..group[0].key.clone()
        }
        .mode();
        let baselines = baselines_for(cells, &transport, direction.as_deref(), &dataset);
        let mut streams: Vec<u32> = group.iter().filter_map(|c| c.key.streams).collect();
        streams.sort();
        streams.dedup();
        let mut chunks: Vec<u64> = group.iter().filter_map(|c| c.key.chunk_bytes).collect();
        chunks.sort();
        chunks.dedup();
        let gbps = |s: Option<u32>, ch: u64| {
            group
                .iter()
                .find(|c| c.key.streams == s && c.key.chunk_bytes == Some(ch))
                .and_then(|c| c.throughput_median_gbps)
        };
        if streams.len() > 1 {
            let series = chunks
                .iter()
                .map(|&ch| Series {
                    name: format!("chunk {}", size_label(ch)),
                    points: streams
                        .iter()
                        .enumerate()
                        .filter_map(|(i, &s)| Some((i, gbps(Some(s), ch)?)))
                        .collect(),
                })
                .collect();
            out.push(PlotSpec {
                file_name: format!("streams-{}-{}.svg", file_part(&mode), dataset),
                title: format!("blit {mode}, {dataset}: throughput vs streams"),
                x_desc: if transport == "rdma" { "queue pairs" } else { "streams" }.into(),
                x_labels: streams.iter().map(|s| s.to_string()).collect(),
                series,
                baselines: baselines.clone(),
            });
        }
        let stream_keys: Vec<Option<u32>> = if streams.is_empty() {
            vec![None]
        } else {
            streams.iter().map(|s| Some(*s)).collect()
        };
        let series = stream_keys
            .iter()
            .map(|&s| Series {
                name: match s {
                    Some(n) => format!("{n} stream{}", if n == 1 { "" } else { "s" }),
                    None => mode.clone(),
                },
                points: chunks
                    .iter()
                    .enumerate()
                    .filter_map(|(i, &ch)| Some((i, gbps(s, ch)?)))
                    .collect(),
            })
            .collect();
        out.push(PlotSpec {
            file_name: format!("chunk-{}-{}.svg", file_part(&mode), dataset),
            title: format!("blit {mode}, {dataset}: throughput vs chunk size"),
            x_desc: "chunk size".into(),
            x_labels: chunks.iter().map(|c| size_label(*c)).collect(),
            series,
            baselines,
        });
    }
    out
}

/// Draws one plot as SVG.
pub fn draw(spec: &PlotSpec, path: &Path) -> anyhow::Result<()> {
    let err = |e: &dyn std::fmt::Debug| anyhow!("drawing {}: {e:?}", path.display());
    let n = spec.x_labels.len().max(1);
    let y_data = spec
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .chain(spec.baselines.iter().map(|b| b.1))
        .fold(0.0f64, f64::max);
    // Head room for the legend, which sits in the upper right.
    let y_max = if y_data > 0.0 { y_data * 1.45 } else { 1.0 };
    let root = SVGBackend::new(path, SIZE_PX).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let x_range = -0.5f64..(n as f64 - 0.5);
    let mut chart = ChartBuilder::on(&root)
        .caption(&spec.title, ("sans-serif", 22))
        .margin(18)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range, 0f64..y_max)
        .map_err(|e| err(&e))?;
    let labels = spec.x_labels.clone();
    let fmt = move |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            labels.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .x_labels(n + 1)
        .x_label_formatter(&fmt)
        .disable_x_mesh()
        .x_desc(&spec.x_desc)
        .y_desc("throughput (Gb/s)")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, s) in spec.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = s.points.iter().map(|(x, y)| (*x as f64, *y)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))
            .map_err(|e| err(&e))?;
    }
    for (j, (name, g)) in spec.baselines.iter().enumerate() {
        let color = Palette99::pick(spec.series.len() + j + 3).to_rgba();
        chart
            .draw_series(DashedLineSeries::new(
                vec![(-0.5, *g), (n as f64 - 0.5, *g)],
                8,
                5,
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(format!("{name}: {g:.2} Gb/s"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Draws every planned plot into `dir`; returns the files written.
pub fn write_all(cells: &[CellSummary], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    for spec in plan(cells) {
        let p = dir.join(&spec.file_name);
        draw(&spec, &p)?;
        out.push(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{RunRecord, summarize};

    fn blit(n: u32, streams: Option<u32>, chunk: u64, gbps: f64) -> RunRecord {
        let mut r = RunRecord::new(n, "blit", if streams.is_some() { "tcp" } else { "local" }, 1);
        r.direction = streams.map(|_| "push".to_string());
        r.dataset = Some("large".into());
        r.streams = streams;
        r.chunk_bytes = Some(chunk);
        r.ok = true;
        r.seconds = 1.0;
        r.bytes = 1;
        r.throughput_bytes_per_sec = gbps * 1e9 / 8.0;
        r
    }

    fn base(
        n: u32,
        tool: &str,
        transport: &str,
        dataset: Option<&str>,
        streams: Option<u32>,
        gbps: f64,
    ) -> RunRecord {
        let mut r = RunRecord::new(n, tool, transport, 1);
        r.dataset = dataset.map(String::from);
        r.streams = streams;
        if transport == "tcp" && dataset.is_some() {
            r.direction = Some("push".into());
        }
        r.ok = true;
        r.seconds = 1.0;
        r.throughput_bytes_per_sec = gbps * 1e9 / 8.0;
        r
    }

    fn cells() -> Vec<CellSummary> {
        summarize(&[
            blit(1, Some(1), 1 << 20, 5.0),
            blit(2, Some(4), 1 << 20, 9.0),
            blit(3, Some(1), 4 << 20, 6.0),
            blit(4, Some(4), 4 << 20, 10.0),
            blit(5, None, 1 << 20, 20.0),
            base(6, "iperf3 -Z", "tcp", None, Some(1), 30.0),
            base(7, "iperf3 -Z", "tcp", None, Some(4), 40.0),
            base(8, "rsync daemon", "tcp", Some("large"), None, 3.0),
            base(9, "cp -a", "local", Some("large"), None, 15.0),
        ])
    }

    #[test]
    fn plan_makes_streams_and_chunk_plots_with_the_right_baselines() {
        let specs = plan(&cells());
        let names: Vec<&str> = specs.iter().map(|s| s.file_name.as_str()).collect();
        assert_eq!(
            names,
            ["chunk-local-large.svg", "streams-tcp-push-large.svg", "chunk-tcp-push-large.svg"]
        );
        let streams = &specs[1];
        assert_eq!(streams.x_labels, ["1", "4"]);
        assert_eq!(streams.series[0].points, vec![(0, 5.0), (1, 9.0)]);
        assert_eq!(
            streams.baselines,
            vec![("iperf3 -Z (best)".to_string(), 40.0), ("rsync daemon push".to_string(), 3.0)]
        );
        assert_eq!(specs[0].baselines, vec![("cp -a".to_string(), 15.0)]);
    }

    #[test]
    fn drawn_svg_is_well_formed() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_all(&cells(), dir.path()).unwrap();
        assert_eq!(files.len(), 3);
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let doc = roxmltree::Document::parse(&text).unwrap();
            assert_eq!(doc.root_element().tag_name().name(), "svg");
            assert!(text.contains("Gb/s"));
        }
    }
}
