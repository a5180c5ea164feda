//! `GET /status` on the admin listener: a small HTML page for people, per
//! set its live timeline, which kid signs, and the next planned transition,
//! with the audit head. No scripts and no external assets (the page must
//! render on an air-gapped operator's machine and pass a strict CSP).
//! Besides what the JWKS, `/metrics` and `keys list` already show, it
//! shows the audit head (`seq:MAC`, as `jwksd audit head` prints it): a
//! MAC reveals nothing of the records or the key, and an operator who can
//! reach the admin listener can note it as a witness outside the store.

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::config::policy::Policy;
use crate::lifecycle::model::StoredKey;
use crate::lifecycle::plan;
use crate::timeline::svg::escape;
use crate::timeline::{Timeline, svg};
use crate::types::KeyState;

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The next thing the lifecycle will do in `policy`'s set, and when.
pub fn next_transition(policy: &Policy, keys: &[StoredKey]) -> Option<(DateTime<Utc>, String)> {
    keys.iter()
        .filter(|k| k.set == policy.name)
        .filter_map(|k| match k.state {
            KeyState::Pending => Some((
                plan::earliest_activation(policy, k),
                format!("{} starts signing {}", k.kid, k.alg),
            )),
            KeyState::Retiring => k
                .retire_at
                .map(|at| (at, format!("{} leaves the JWKS", k.kid))),
            _ => None,
        })
        .min_by_key(|(at, _)| *at)
}

/// The page. `audit_head` is the newest audit record's `(seq, hash)`.
pub fn page(
    policies: &[&Policy],
    keys: &[StoredKey],
    now: DateTime<Utc>,
    audit_head: Option<(i64, String)>,
) -> String {
    let mut s = String::with_capacity(16 * 1024);
    // `write!` into a String cannot fail.
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>jwksd status</title>\
         <style>body{{font-family:sans-serif;margin:1.5em}}td,th{{padding:2px 10px;text-align:left}}\
         code{{font-size:0.95em}}svg{{max-width:100%;height:auto}}</style></head><body>\
         <h1>jwksd status</h1><p>As of <time id=\"now\">{}</time>.</p>",
        rfc3339(now)
    );
    match audit_head {
        Some((seq, hash)) => {
            let _ = write!(
                s,
                "<p>Audit head: <code id=\"audit-head\">{seq}:{}</code> (compare with <code>jwksd audit head</code>)</p>",
                escape(&hash)
            );
        }
        None => s.push_str("<p>Audit head: <code id=\"audit-head\">none yet</code></p>"),
    }
    for policy in policies {
        let set = escape(policy.name.as_str());
        let _ = write!(
            s,
            "<section class=\"set\" id=\"set-{set}\"><h2>Set {set}</h2><table><tr><th>alg</th><th>signs</th><th>since</th></tr>"
        );
        for alg in &policy.algorithms {
            let signer = keys
                .iter()
                .find(|k| k.set == policy.name && k.alg == *alg && k.state == KeyState::Active);
            let (kid, since) = signer.map_or(("none yet".to_owned(), String::new()), |k| {
                (
                    k.kid.to_string(),
                    k.activate_at.map(rfc3339).unwrap_or_default(),
                )
            });
            let _ = write!(
                s,
                "<tr class=\"signer\" data-alg=\"{alg}\"><td>{alg}</td><td><code>{}</code></td><td>{since}</td></tr>",
                escape(&kid)
            );
        }
        s.push_str("</table>");
        match next_transition(policy, keys) {
            Some((at, what)) => {
                let _ = write!(
                    s,
                    "<p class=\"next\">Next: <time>{}</time>: {}</p>",
                    rfc3339(at),
                    escape(&what)
                );
            }
            None => s.push_str("<p class=\"next\">Next: nothing planned</p>"),
        }
        let timeline = Timeline::live(keys, &[policy], now);
        s.push_str(&svg::render(&timeline, &format!("set {}", policy.name)));
        s.push_str("</section>");
    }
    s.push_str("</body></html>\n");
    s
}
