mod build;
mod crash;
mod deploy;
mod hostile;
mod pipeline;
pub mod remote;
mod report;
mod s3;
mod verify;
