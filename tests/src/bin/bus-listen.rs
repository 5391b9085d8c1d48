//! A plain bus client for the policy tests: subscribes to every signal (an ordinary match
//! rule, not a monitor), prints `subscribed`, then prints one line per signal it receives,
//! `<interface> <member> <sender>`, until a signal named `Done` arrives, and exits. Run as
//! another user, it shows which signals the bus policy lets that user receive.

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use futures_util::StreamExt;

#[derive(Debug, Parser)]
struct Arguments {
    /// D-Bus address of the private bus.
    #[arg(long)]
    address: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let arguments = Arguments::parse();
    let address = sluice_core::bus::BusAddress::Address(arguments.address);
    let connection = sluice_core::bus::connect(&address)
        .await
        .context("connect to the bus")?;
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .build()?;
    let mut signals = zbus::MessageStream::for_match_rule(rule, &connection, None).await?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "subscribed")?;
    stdout.flush()?;
    while let Some(message) = signals.next().await {
        let message = message?;
        let header = message.header();
        let interface = header
            .interface()
            .map(|name| name.to_string())
            .unwrap_or_default();
        let member = header
            .member()
            .map(|name| name.to_string())
            .unwrap_or_default();
        let sender = header
            .sender()
            .map(|name| name.to_string())
            .unwrap_or_default();
        writeln!(stdout, "{interface} {member} {sender}")?;
        stdout.flush()?;
        if member == "Done" {
            break;
        }
    }
    Ok(())
}
