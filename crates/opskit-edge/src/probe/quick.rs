//! The quick probe: the few requests that show a broken site (TLS, the home page, bot
//! routing, the 301, `/api/landing`), answered in well under a second. `apply` runs it right
//! after the reload so a broken config is rolled back within a second or two, before the full
//! probe (which takes 20 s or more) starts.

use super::Probe;
use super::curl::{Alpn, Request, Response};
use super::shown;

impl Probe<'_> {
    /// Sends a request that may land in the API zone; a 429 (the zone was busy, e.g. the
    /// home page fell back to `/api/landing`) is retried once after the zone drained, so only
    /// a real fault fails a quick check.
    fn send_drained(&mut self, req: &Request) -> anyhow::Result<Response> {
        let first = self.send_api_now(req)?;
        if first.status != 429 {
            return Ok(first);
        }
        self.send_api(req)
    }

    pub(super) fn quick_checks(&mut self) -> anyhow::Result<()> {
        let home = self.send_drained(&self.page("/"))?;
        self.record(
            "quick.tls_h2",
            home.curl_exit == 0 && home.http_version == "2",
            format!(
                "GET / over TLS with chain verification, offering h2 → {}",
                home.summary()
            ),
        );
        self.record(
            "quick.home_200",
            home.status == 200,
            format!("GET / → {} (expected 200)", home.summary()),
        );
        let bot = self.send(&self.page("/").user_agent(&self.bot_ua()))?;
        let routed = bot.curl_exit == 0 && self.served_by_bot(&bot, &home);
        self.record(
            "quick.bot_routed",
            routed,
            format!(
                "GET / as `{}` → {}, {}",
                self.bot_ua(),
                bot.summary(),
                if routed {
                    "from the bot upstream"
                } else {
                    "NOT from the bot upstream"
                }
            ),
        );
        let want = self.origin.https("/?quick=1");
        let mut plain = Request::get(self.origin.http("/?quick=1"));
        plain.alpn = Alpn::Http11;
        let r = self.send(&plain)?;
        let location = r.header("location");
        self.record(
            "quick.redirect_301",
            r.status == 301 && location == Some(want.as_str()),
            format!(
                "GET {} → {} Location {} (expected 301 {want})",
                plain.url,
                r.summary(),
                shown(location)
            ),
        );
        let api = self.send_drained(&self.page("/api/landing"))?;
        self.record(
            "quick.api_landing_200",
            api.status == 200,
            format!("GET /api/landing → {} (expected 200)", api.summary()),
        );
        Ok(())
    }
}
