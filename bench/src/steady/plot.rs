//! The steady bench's plot: latency (p99 and max per second) and RSS over time, as a plain SVG.

use super::{STALL_MS, Second};

/// Latency (p99 and max per second, left axis, ms) and RSS (right axis, MiB) over time, with the stall bound
/// drawn across: a plain SVG, readable in a browser and on GitHub.
pub(crate) fn svg_plot(rows: &[Second], title: &str) -> String {
    let (width, height, left, right, top, bottom) = (900.0, 360.0, 60.0, 70.0, 40.0, 40.0);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let t_max = rows.last().map_or(1.0, |r| r.t.max(1) as f64);
    let ms_max = rows.iter().map(|r| r.max_ms).fold(STALL_MS * 1.2, f64::max);
    let rss_max = rows.iter().map(|r| r.rss_mib).fold(1.0, f64::max) * 1.2;
    let x = |t: f64| left + t / t_max * plot_w;
    let y_ms = |ms: f64| top + plot_h - ms / ms_max * plot_h;
    let y_rss = |mib: f64| top + plot_h - mib / rss_max * plot_h;
    let line = |points: Vec<(f64, f64)>, color: &str| {
        let path: Vec<String> = points.iter().map(|(px, py)| format!("{px:.1},{py:.1}")).collect();
        format!(r#"<polyline fill="none" stroke="{color}" stroke-width="1.2" points="{}"/>"#, path.join(" "))
    };
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    svg.push_str(&format!(r#"<rect width="{width}" height="{height}" fill="white"/>"#));
    svg.push_str(&format!(r#"<text x="{left}" y="20" font-size="13">{}</text>"#, escape(title)));
    svg.push_str(&format!(
        r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>"##
    ));
    for k in 0..=4 {
        let fraction = k as f64 / 4.0;
        let (ms, mib, t) = (ms_max * fraction, rss_max * fraction, t_max * fraction);
        svg.push_str(&format!(
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{ms:.0} ms</text>"#,
            left - 6.0,
            y_ms(ms) + 4.0
        ));
        svg.push_str(&format!(
            r#"<text x="{:.1}" y="{:.1}">{mib:.0} MiB</text>"#,
            width - right + 6.0,
            y_rss(mib) + 4.0
        ));
        svg.push_str(&format!(
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{t:.0} s</text>"#,
            x(t),
            height - bottom + 16.0
        ));
    }
    svg.push_str(&format!(
        r##"<line x1="{left}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#c00" stroke-dasharray="4 3"/>"##,
        left + plot_w,
        y = y_ms(STALL_MS)
    ));
    svg.push_str(&line(rows.iter().map(|r| (x(r.t as f64), y_ms(r.max_ms))).collect(), "#f0a040"));
    svg.push_str(&line(rows.iter().map(|r| (x(r.t as f64), y_ms(r.p99_ms))).collect(), "#2060c0"));
    svg.push_str(&line(rows.iter().map(|r| (x(r.t as f64), y_rss(r.rss_mib))).collect(), "#30a050"));
    // A tick along the time axis for each second in which some node's WAL fsync took over 32 ms.
    for r in rows.iter().filter(|r| r.slow_fsyncs > 0) {
        svg.push_str(&format!(
            r##"<line x1="{px:.1}" x2="{px:.1}" y1="{:.1}" y2="{:.1}" stroke="#804000" stroke-width="2"/>"##,
            top + plot_h - 8.0,
            top + plot_h,
            px = x(r.t as f64)
        ));
    }
    let legend = [
        ("#2060c0", "p99 per second"),
        ("#f0a040", "max per second"),
        ("#30a050", "RSS of the nodes"),
        ("#c00", "50 ms"),
        ("#804000", "an fsync over 32 ms"),
    ];
    for (i, (color, label)) in legend.iter().enumerate() {
        let lx = left + 10.0 + i as f64 * 150.0;
        svg.push_str(&format!(
            r#"<rect x="{lx}" y="{:.1}" width="12" height="3" fill="{color}"/><text x="{:.1}" y="{:.1}">{label}</text>"#,
            top + 10.0,
            lx + 16.0,
            top + 14.0
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
