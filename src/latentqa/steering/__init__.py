"""Control: steer a target with the decoder's loss (the paper's section 5), and measure it."""

from .adapter import SteerSpec, load_steering, save_steering
from .control import Control, ControlError, load_control
from .generate import generate_replies
from .loss import answer_logprob
from .run import SteerConfig, SteerResult, steer
from .service import serve_steer

__all__ = ["SteerSpec", "load_steering", "save_steering", "Control", "ControlError",
           "load_control", "generate_replies", "answer_logprob", "SteerConfig", "SteerResult",
           "steer", "serve_steer"]
