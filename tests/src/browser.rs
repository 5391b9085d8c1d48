//! A real browser for the dashboard tests: headless Chromium started as a child process and
//! driven over the Chrome DevTools Protocol (CDP) on a loopback WebSocket.
//!
//! The CDP client is the few lines the tests need (send a command, match its answer by id,
//! keep every event that arrives meanwhile) over `tungstenite`, not one of the CDP crates:
//! `chromiumoxide` and `headless_chrome` each bring a generated binding of the whole protocol
//! (tens of thousands of lines to compile on every test build) and an async runtime or HTTP
//! stack of their own, for the eight methods used here.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use crate::process::{STARTUP_DEADLINE, wait_until};

/// The Chromium binary, when it is installed (Debian's `chromium` package).
pub fn chromium_path() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
}

/// A headless Chromium with its own profile directory, killed when dropped.
#[derive(Debug)]
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    devtools_port: u16,
}

impl Browser {
    pub fn start(binary: &Path) -> anyhow::Result<Browser> {
        let profile = tempfile::tempdir().context("a profile directory")?;
        let mut command = Command::new(binary);
        command
            .arg("--headless=new")
            .arg("--remote-debugging-address=127.0.0.1")
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args([
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-sync",
                "--disable-component-update",
                "--hide-scrollbars",
                "--mute-audio",
                "--window-size=1280,900",
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Chromium's sandbox refuses to run as root and, as another user, needs user
        // namespaces that containers and CI machines often lack; the tests' browser only ever
        // loads the suite's own page on 127.0.0.1, so it runs without one everywhere.
        command.arg("--no-sandbox");
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut browser = Browser {
            child,
            _profile: profile,
            devtools_port: 0,
        };
        // With port 0 Chromium picks a free port and writes it into DevToolsActivePort.
        let port_file = browser._profile.path().join("DevToolsActivePort");
        let mut port = None;
        wait_until(STARTUP_DEADLINE, || {
            port = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|text| text.lines().next()?.trim().parse::<u16>().ok());
            port.is_some()
        });
        browser.devtools_port = port.with_context(|| {
            format!(
                "chromium did not open its DevTools port within {STARTUP_DEADLINE:?} (exit: {:?})",
                browser.child.try_wait()
            )
        })?;
        Ok(browser)
    }

    /// A new tab, connected over its own DevTools WebSocket, with the domains the tests read
    /// events of enabled.
    pub fn new_page(&self) -> anyhow::Result<Page> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let target: Value = serde_json::from_str(
            &agent
                .put(format!(
                    "http://127.0.0.1:{}/json/new?about:blank",
                    self.devtools_port
                ))
                .send_empty()
                .context("open a tab over /json/new")?
                .body_mut()
                .read_to_string()?,
        )?;
        let url = target["webSocketDebuggerUrl"]
            .as_str()
            .with_context(|| format!("no webSocketDebuggerUrl in {target}"))?;
        let (socket, _) = tungstenite::connect(url).context("connect to the tab's DevTools")?;
        if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
            stream.set_read_timeout(Some(Duration::from_millis(100)))?;
        }
        let mut page = Page {
            socket,
            next_id: 0,
            events: Vec::new(),
        };
        for domain in ["Page", "Runtime", "Log", "DOM", "Network"] {
            page.call(&format!("{domain}.enable"), json!({}))?;
        }
        Ok(page)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One tab: commands with their answers, and every event received so far.
#[derive(Debug)]
pub struct Page {
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// `(method, params)` of every event, oldest first.
    pub events: Vec<(String, Value)>,
}

/// How long one command may take to be answered.
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

impl Page {
    /// Sends a command and returns its `result`; a CDP error is an `Err`.
    pub fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(Message::text(command.to_string()))
            .with_context(|| format!("send {method}"))?;
        let deadline = Instant::now() + COMMAND_DEADLINE;
        loop {
            if Instant::now() > deadline {
                bail!("{method} was not answered within {COMMAND_DEADLINE:?}");
            }
            let Some(message) = self.receive()? else {
                continue;
            };
            if message["id"].as_u64() == Some(id) {
                if let Some(error) = message.get("error") {
                    bail!("{method} failed: {error}");
                }
                return Ok(message["result"].clone());
            }
        }
    }

    /// Reads whatever events arrived, without sending anything.
    pub fn pump(&mut self) -> anyhow::Result<()> {
        while self.receive()?.is_some() {}
        Ok(())
    }

    /// Evaluates `expression` in the page (awaiting it when it is a promise) and returns its
    /// value as JSON; an exception in it is an `Err`.
    pub fn evaluate(&mut self, expression: &str) -> anyhow::Result<Value> {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        )?;
        if let Some(exception) = result.get("exceptionDetails") {
            bail!("{expression} threw: {exception}");
        }
        Ok(result["result"]["value"].clone())
    }

    /// Evaluates `expression` until it is truthy (its value) or `timeout` passes (`Err`, with
    /// `what` and the last value).
    pub fn wait_for(
        &mut self,
        what: &str,
        expression: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.evaluate(expression)?;
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(flag) => *flag,
                Value::Number(number) => number.as_f64() != Some(0.0),
                Value::String(text) => !text.is_empty(),
                _ => true,
            };
            if truthy {
                return Ok(value);
            }
            if Instant::now() > deadline {
                bail!("{what}: not seen within {timeout:?} (last value {value})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Loads `url` and waits until its document has loaded.
    pub fn navigate(&mut self, url: &str) -> anyhow::Result<()> {
        self.call("Page.navigate", json!({ "url": url }))?;
        self.wait_for(
            &format!("{url} loaded"),
            "document.readyState === 'complete' && location.href !== 'about:blank'",
            COMMAND_DEADLINE,
        )?;
        Ok(())
    }

    /// Types `text` into the element `selector` and submits its form, as a person would.
    pub fn fill_and_submit(&mut self, selector: &str, text: &str) -> anyhow::Result<()> {
        let selector = serde_json::to_string(selector)?;
        let text = serde_json::to_string(text)?;
        self.evaluate(&format!(
            "(() => {{ const field = document.querySelector({selector}); field.focus(); \
             field.value = {text}; field.form.requestSubmit(); return true; }})()"
        ))?;
        Ok(())
    }

    /// Sets the files of the `<input type=file>` `selector` (as choosing them in the file
    /// dialog does; the page gets its `change` event).
    pub fn set_input_files(&mut self, selector: &str, files: &[&Path]) -> anyhow::Result<()> {
        let document = self.call("DOM.getDocument", json!({}))?;
        let node = self.call(
            "DOM.querySelector",
            json!({ "nodeId": document["root"]["nodeId"], "selector": selector }),
        )?;
        let files: Vec<String> = files
            .iter()
            .map(|path| path.display().to_string())
            .collect();
        self.call(
            "DOM.setFileInputFiles",
            json!({ "nodeId": node["nodeId"], "files": files }),
        )?;
        Ok(())
    }

    /// Drags `files` from outside the browser onto the element `selector` and drops them
    /// there, as a person dropping files from their file manager does.
    pub fn drop_files(&mut self, selector: &str, files: &[&Path]) -> anyhow::Result<()> {
        let selector = serde_json::to_string(selector)?;
        let centre = self.evaluate(&format!(
            "(() => {{ const target = document.querySelector({selector}); \
               target.scrollIntoView({{ block: 'center' }}); \
               const box = target.getBoundingClientRect(); \
               return {{ x: box.x + box.width / 2, y: box.y + box.height / 2 }}; }})()"
        ))?;
        let files: Vec<String> = files
            .iter()
            .map(|path| path.display().to_string())
            .collect();
        let data = json!({ "items": [], "files": files, "dragOperationsMask": 1 });
        for kind in ["dragEnter", "dragOver", "drop"] {
            self.call(
                "Input.dispatchDragEvent",
                json!({ "type": kind, "x": centre["x"], "y": centre["y"], "data": data }),
            )?;
        }
        Ok(())
    }

    /// A PNG of the page at `width` CSS pixels, as tall as its content.
    pub fn screenshot(&mut self, width: u32, mobile: bool) -> anyhow::Result<Vec<u8>> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": 900, "deviceScaleFactor": 1, "mobile": mobile }),
        )?;
        let height = self
            .evaluate("Math.ceil(document.documentElement.scrollHeight)")?
            .as_u64()
            .unwrap_or(900)
            .clamp(400, 8000);
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        )?;
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }))?;
        self.call("Emulation.clearDeviceMetricsOverride", json!({}))?;
        let data = shot["data"].as_str().context("screenshot data")?;
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .context("the screenshot is not base64")
    }

    /// Every error the page reported: uncaught exceptions, `console.error` calls and browser
    /// log entries at level `error` (failed loads among them), as one line each with its
    /// event name.
    pub fn errors(&mut self) -> anyhow::Result<Vec<String>> {
        self.pump()?;
        Ok(self
            .events
            .iter()
            .filter_map(|(method, params)| match method.as_str() {
                "Runtime.exceptionThrown" => Some(format!(
                    "{method}: {}",
                    params["exceptionDetails"]["exception"]["description"]
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| params["exceptionDetails"].to_string())
                )),
                "Runtime.consoleAPICalled" if params["type"] == "error" => {
                    Some(format!("{method}: {}", params["args"]))
                }
                "Log.entryAdded" if params["entry"]["level"] == "error" => Some(format!(
                    "{method} ({}): {} {}",
                    params["entry"]["source"].as_str().unwrap_or_default(),
                    params["entry"]["text"].as_str().unwrap_or_default(),
                    params["entry"]["url"].as_str().unwrap_or_default()
                )),
                _ => None,
            })
            .collect())
    }

    /// One message, or `None` when nothing arrived within the read timeout; events are kept.
    fn receive(&mut self) -> anyhow::Result<Option<Value>> {
        match self.socket.read() {
            Ok(Message::Text(text)) => {
                let message: Value = serde_json::from_str(text.as_str())?;
                if let Some(method) = message["method"].as_str() {
                    self.events
                        .push((method.to_owned(), message["params"].clone()));
                }
                Ok(Some(message))
            }
            Ok(_) => Ok(Some(Value::Null)),
            Err(tungstenite::Error::Io(error))
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(error) => Err(error).context("the DevTools connection broke"),
        }
    }
}

/// Where test runs keep what they make for people to look at: `target/test-artefacts/`.
pub fn artefacts_dir() -> PathBuf {
    let directory = crate::process::workspace_root()
        .join("target")
        .join("test-artefacts");
    let _ = std::fs::create_dir_all(&directory);
    directory
}
